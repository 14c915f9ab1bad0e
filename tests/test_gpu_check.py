"""scripts/gpu_check.sh and the benchmarks.gpu_check it runs, in their CPU dry run (tiny sizes): the plumbing of the
GPU check is tested here, so a lent GPU machine's minutes go to measuring. The GPU run itself: README, GPU check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, python_env

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_dry_run_trains_lora_and_full_and_writes_the_report(tmp_path):
    from benchmarks.gpu_check import main
    from benchmarks.workloads import TINY_GQA_LLAMA
    from sft_core.embedded import build_tiny_llama

    report = main(["--dry-run", "--out", str(tmp_path), "--skip", "vs_trl"])
    assert report["errors"] == {}
    assert report["peak_bf16_tflops"] > 0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(saved["train"]) == {"lora", "full"}
    params = build_tiny_llama(0, **TINY_GQA_LLAMA).num_parameters()
    assert saved["train"]["full"]["params"] == saved["train"]["full"]["trainable"] == params
    lora = saved["train"]["lora"]
    assert lora["params"] - params == lora["trainable"] < params  # the base and its adapters; only adapters train
    for case in saved["train"].values():
        assert case["device"] == "cpu" and case["steps"] == 3
        assert case["eval_loss_after"] < case["eval_loss_before"], case  # seeded: the same numbers every run
        assert case["tokens_per_s"] > case["target_tokens_per_s"] > 0  # prompts count as processed tokens
        flops = case["tokens_per_s"] * 6 * case["params"]
        assert case["mfu"] == pytest.approx(flops / (saved["peak_bf16_tflops"] * 1e12))
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "CPU dry run" in text and "bf16 matmul peak" in text
    assert sum(line.startswith(("lora", "full")) for line in text.splitlines()) == 2


def test_without_cuda_the_real_run_is_refused_with_the_way_out(tmp_path, capsys):
    from benchmarks.gpu_check import main

    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(tmp_path)])
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert "no CUDA GPU here" in said and "--dry-run" in said
    assert not list(tmp_path.iterdir())  # nothing written: no half report


def test_the_script_refuses_an_unknown_argument():
    result = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.mark.extended
def test_the_script_dry_run_goes_through_every_step(tmp_path):
    """The whole script as on a GPU machine, at tiny sizes on the CPU: GPU tests (skipped here), both training
    cases, and the vs_trl row with every contender in its own process."""
    result = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], env=python_env(OUT=str(tmp_path),
                            PYTHON=sys.executable, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    written = {p.name for p in tmp_path.iterdir()}
    assert {"gpu_check.json", "gpu_check.txt", "gpu_check.log", "gpu_pytest.log"} <= written
    assert "3 skipped" in (tmp_path / "gpu_pytest.log").read_text()  # no CUDA here: the GPU tests skip, not fail
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["errors"] == {} and set(report["train"]) == {"lora", "full"}
    rows = {r["contender"]: r for r in report["vs_trl"]["results"]}
    assert {"ours", "ours_ckpt"} <= set(rows) and all("error" not in r for r in rows.values()), rows
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in rows.values())
    if "trl" in rows:
        assert "ours_vs_trl" in report["vs_trl"]["summary"]
    assert "all steps passed" in (tmp_path / "gpu_check.log").read_text()
