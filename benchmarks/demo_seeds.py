"""Does the demo learn for every seed? Train the default demo config once per seed and compare.

    python -m benchmarks.demo_seeds                    # seeds 1000 1 2 3 4: ~15 min on 2 quiet CPU cores
    python -m benchmarks.demo_seeds --seeds 1 2 --steps 300    # a smoke run

Each seed trains in a process of its own (`python -m sft_core train --set train.seed=N`), one after
another, so each has the machine to itself and its train_seconds is what `make demo` would show.
The seed sets the model's initialization, the demo data and the batch order, so the spread across
seeds is the spread a user sees. Prints a table and min/median/max, with the CPU model (kernels differ
between CPUs, and so do the numbers), and writes benchmarks/results/demo_seeds-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sft_core.layout import SUMMARY_FILE

RESULTS = Path(__file__).with_name("results")
DEFAULT_SEEDS = (1000, 1, 2, 3, 4)  # 1000 is the config's default seed
METRIC = "metrics/exact_match"


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo (Linux) or lscpu, else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def train_seed(seed: int, steps: int | None, work: Path) -> dict:
    """One default-config run in a child process; its summary, or the error's tail."""
    run_dir = work / f"seed-{seed}"
    sets = [f"train.seed={seed}", f"train.checkpoint_dir={run_dir / 'checkpoints'}",
            f"train.logging_dir={run_dir / 'logs'}"]
    if steps is not None:
        sets.append(f"train.total_steps={steps}")
    cmd = [sys.executable, "-m", "sft_core", "train", *(a for s in sets for a in ("--set", s)),
           "--output", str(run_dir / "model")]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "SFTFLOW_CACHE": str(work / "data-cache")}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"seed": seed, "error": proc.stderr[-2000:]}
    summary = json.loads((run_dir / "logs" / SUMMARY_FILE).read_text())
    final = summary["final_metrics"]
    return {"seed": seed, "exact_match": final.get(METRIC), "eval_loss": final.get("eval/loss"),
            "train_seconds": summary["train_seconds"], "steps": summary["steps"], "process_wall_s": wall}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}


def print_table(rows: list[dict], summary: dict, cpu: str) -> None:
    print(f"\nCPU: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    print(f"{'seed':>6} {'exact match':>11} {'eval loss':>9} {'train s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['seed']:>6} ERROR: {r['error'].strip().splitlines()[-1][:90]}")
        else:
            print(f"{r['seed']:>6} {r['exact_match']:11.4f} {r['eval_loss']:9.4f} {r['train_seconds']:8.1f}")
    for key, label, fmt in (("exact_match", "exact match", ".4f"), ("train_seconds", "train s", ".1f")):
        s = summary[key]
        if s:
            print(f"{label:>12}: min {s['min']:{fmt}}  median {s['median']:{fmt}}  max {s['max']:{fmt}}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="*", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--steps", type=int, default=None, help="train.total_steps (default: the config's)")
    args = parser.parse_args()
    started = time.time()
    cpu = cpu_model()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            print(f"training seed {seed} ...", flush=True)
            rows.append(train_seed(seed, args.steps, Path(work)))
            if "error" not in rows[-1]:
                print(f"  exact match {rows[-1]['exact_match']:.4f} in {rows[-1]['train_seconds']:.0f}s", flush=True)
    done = [r for r in rows if "error" not in r]
    summary = {key: spread([r[key] for r in done]) for key in ("exact_match", "train_seconds")}
    print_table(rows, summary, cpu)

    report = {"machine": {"cpu": cpu, "platform": platform.platform(), "cpus": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
              "steps": args.steps, "results": rows, "summary": summary, "wall_s": time.time() - started}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"demo_seeds-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path} in {report['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
