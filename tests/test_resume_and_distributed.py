"""2-process data parallel on the CPU and DeepSpeed ZeRO-2/3: real processes. (Resume after SIGKILL: test_faults.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import PYTHON, ROOT, python_env, tiny_config
from sft_core.tracking import read_history


def write_config(run_dir: Path, **sections) -> Path:
    path = run_dir / "config.yaml"
    tiny_config(run_dir, **sections).save_yaml(path)
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """step -> train/loss; for a resumed run the newest line for a step wins."""
    return {h["step"]: h["train/loss"] for h in read_history(run_dir / "logs" / "metrics.jsonl") if "train/loss" in h}


def test_resume_from_a_path_that_is_not_a_checkpoint(tmp_path):
    from sft_core import ConfigError, train

    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match="train.resume_from_checkpoint"):
        train(config=tiny_config(tmp_path, train=dict(resume_from_checkpoint=str(tmp_path / "half"))))


def record_rows(config: Path, out: Path, nproc: int) -> subprocess.CompletedProcess:
    script = str(ROOT / "tests" / "scripts" / "record_rows.py")
    if nproc == 1:
        cmd = [PYTHON, script, str(config), str(out)]
    else:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + os.getpid() % 1000), script, str(config), str(out)]
    return subprocess.run(cmd, env=python_env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_cpu_run_matches_one_process(tmp_path):
    common = dict(total_steps=20, eval_interval=20, checkpoint_interval=20, log_interval=1)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    runs = {}
    # The two ranks also run each batch as several passes (syncing gradients after the last one).
    for run_dir, nproc, batch, tokens_per_pass in ((one, 1, 8, None), (two, 2, 4, 32)):
        config = write_config(run_dir, train=dict(common, batch_size=batch, tokens_per_pass=tokens_per_pass),
                              data=dict(max_eval_prompts=8))
        result = record_rows(config, run_dir / "rows", nproc)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[nproc] = [json.loads((run_dir / "rows" / f"rows-rank{r}.json").read_text()) for r in range(nproc)]

    rank0, rank1 = runs[2]
    assert all(set(a).isdisjoint(b) for a, b in zip(rank0, rank1))  # each rank saw different rows
    assert [a + b for a, b in zip(rank0, rank1)] == runs[1][0]  # together, the same rows as one process
    a, b = losses(one), losses(two)
    assert sorted(b) == list(range(1, 21))  # one writer: one line per step, not two
    worst = max(abs(a[s] - b[s]) for s in range(1, 21))
    assert worst < 1e-4, worst
    assert [p.name for p in (two / "checkpoints").iterdir() if p.name.startswith("step")] == ["step-20"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_trains_on_cpu(tmp_path, stage):
    """One process, as on a 1-GPU box; ZeRO-3's export must gather the sharded weights."""
    pytest.importorskip("deepspeed")
    config = write_config(tmp_path, train=dict(total_steps=10, eval_interval=10, checkpoint_interval=10),
                          data=dict(max_eval_prompts=8))
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "sft_core" / "launch_configs" / f"{stage}.yaml"), "--num_processes", "1",
           "--mixed_precision", "no", "-m", "sft_core", "train", str(config)]
    result = subprocess.run(cmd, env=python_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "checkpoints" / "step-10"
    assert (checkpoint / "pytorch_model").is_dir()  # a DeepSpeed checkpoint, so DeepSpeed really ran
    steps = losses(tmp_path)
    assert steps[10] < steps[1]
    weights = load_file(tmp_path / "model" / "model.safetensors")
    assert weights and min(t.numel() for t in weights.values()) > 0  # nothing saved empty
