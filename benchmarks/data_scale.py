"""Preparing 100k, 300k and 1M Alpaca rows: time, rows/s, tokens/s and peak memory, on one core and on all.

    python -m benchmarks.data_scale            # ~15 min on 2 idle CPU cores; writes benchmarks/results/*.json
    python -m benchmarks.data_scale --quick    # 20k and 60k rows: a smoke run
    python -m benchmarks.data_scale --sizes 100000 1000000

Everything is generated and measured in this run, offline, on this machine. The data are seeded
Alpaca JSONL files (instruction, input on 40% of the rows, output). Each measurement is a process
of its own, from cold caches, through the config path: ``sft_core.run.prepare_data`` with
``data.path`` the file, ``data.template: alpaca``, the embedded byte tokenizer and ``seq_length``
1024, with ``data.num_proc`` 1 and ``auto``. Peak RSS is the largest total, sampled every 50 ms, of
the process and its children (the map's workers). Beside it, the floor: the same file through a
plain ``datasets.load_dataset("json") + map(num_proc=N)`` that renders the same Alpaca prompt,
tokenizes prompt and completion and builds the label mask, and nothing else (no checks, no held-out
split, no counts, no prepared folder). Last, the cached re-run of the largest file: a new process
computes the run's data key (hashing the file) and calls prepare_data, which finds the folder; and
``prepare_from_config`` (the ``train()`` path), which finds ``data.cache_dir/<key>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).with_name("results")
SIZES = (100_000, 300_000, 1_000_000)
QUICK_SIZES = (20_000, 60_000)
SEQ_LENGTH = 1024
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def write_alpaca(path: Path, rows: int, seed: int = 0) -> Path:
    """Seeded Alpaca rows of about 240 bytes (the issue's 24 MB per 100k rows)."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(2000)]

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choices(vocab, k=rng.randint(lo, hi)))

    with path.open("w") as f:
        for _ in range(rows):
            row = {"instruction": words(4, 16), "input": words(3, 14) if rng.random() < 0.4 else "",
                   "output": words(8, 40)}
            f.write(json.dumps(row) + "\n")
    return path


# -- children: one measurement each ----------------------------------------------------------------
def child_ours(data: str, num_proc: str, work: str) -> dict:
    from sft_core import default_sft_config
    from sft_core.run import Run, data_cache_key, prepare_data

    config = default_sft_config().evolve(
        train=dict(seq_length=SEQ_LENGTH),
        data=dict(path=data, template="alpaca", num_proc=num_proc if num_proc == "auto" else int(num_proc),
                  cache_dir=str(Path(work) / "cache")))
    t = time.perf_counter()
    run = Run(name="bench", root=str(Path(work) / "run"), config=config, data_key=data_cache_key(config),
              prepared_root=str(Path(work) / "prepared"))
    key_s = time.perf_counter() - t
    prepared = prepare_data(run)
    seconds = time.perf_counter() - t
    rows = prepared.train_rows + prepared.eval_rows
    meta = json.loads((Path(prepared.path) / "sftflow_prepared.json").read_text())
    tokens = prepared.train_tokens + (meta["eval_stats"] or {}).get("total_tokens", 0)
    return {"seconds": seconds, "key_s": key_s, "rows": rows, "tokens": tokens, "train_rows": prepared.train_rows,
            "truncated": prepared.truncated_rows, "dropped": prepared.dropped_rows}


def child_ours_cached_train_path(data: str, work: str) -> dict:
    """train()'s path: prepare_from_config, with data.cache_dir already holding the prepared folder."""
    from sft_core import default_sft_config
    from sft_core.data.prepared import prepare_from_config
    from sft_core.modeling import load_tokenizer

    config = default_sft_config().evolve(train=dict(seq_length=SEQ_LENGTH), data=dict(
        path=data, template="alpaca", cache_dir=str(Path(work) / "cache")))
    t = time.perf_counter()
    bundle = prepare_from_config(config, load_tokenizer(config.tokenizer, config.model))
    return {"seconds": time.perf_counter() - t, "rows": len(bundle.train.dataset), "cached": bundle.train.stats.cached}


def child_floor(data: str, num_proc: str, work: str) -> dict:
    import datasets

    from sft_core.data.sources import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT
    from sft_core.embedded import build_byte_tokenizer

    datasets.disable_progress_bars()
    tokenizer = build_byte_tokenizer()
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        prompts = [(ALPACA_PROMPT_WITH_INPUT if inp.strip() else ALPACA_PROMPT).format(instruction=ins, input=inp)
                   for ins, inp in zip(batch["instruction"], batch["input"])]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(batch["output"], add_special_tokens=False)["input_ids"]
        ids = [(p + c + [eos])[:SEQ_LENGTH] for p, c in zip(prompt_ids, completion_ids)]
        labels = [([-100] * len(p) + c + [eos])[:SEQ_LENGTH] for p, c in zip(prompt_ids, completion_ids)]
        return {"input_ids": ids, "labels": labels}

    t = time.perf_counter()
    rows = datasets.load_dataset("json", data_files=data, split="train", cache_dir=str(Path(work) / "hf"))
    out = rows.map(tokenize, batched=True, num_proc=int(num_proc) if int(num_proc) > 1 else None,
                   remove_columns=rows.column_names)
    seconds = time.perf_counter() - t
    tokens = sum(len(ids) for batch in out.select_columns("input_ids").iter(10_000) for ids in batch["input_ids"])
    return {"seconds": seconds, "rows": len(out), "tokens": tokens}


# -- the parent: runs children, samples their memory -------------------------------------------------
def measure(kind: str, *args: str) -> dict:
    """Run one child; its result plus the peak RSS (MB) of its process tree."""
    out = Path(tempfile.mkdtemp()) / "result.json"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.data_scale", "--child", kind, *args, str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = peak_main = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(_rss(p) for p in tree))
            peak_main = max(peak_main, _rss(parent))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        return {"kind": kind, "error": stderr[-2000:]}
    result = json.loads(out.read_text())
    # forked workers share the main process's pages, and RSS counts them in each: the tree's total
    # counts them again per worker. Its largest total is what the issue asks for; the main alone beside it.
    result.update(kind=kind, peak_rss_mb=peak / 2**20, peak_rss_main_mb=peak_main / 2**20,
                  process_s=time.perf_counter() - started)
    result["rows_per_s"] = result["rows"] / result["seconds"]
    if "tokens" in result:
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_all(sizes: tuple[int, ...], root: Path) -> dict:
    results, cores, cached = [], usable_cores(), {}
    for rows in sizes:
        data = write_alpaca(root / f"alpaca-{rows}.jsonl", rows)
        for kind, procs in (("ours", "1"), ("ours", "auto"), ("floor", str(cores))):
            work = Path(tempfile.mkdtemp(dir=root))
            print(f"{rows:>9,} rows  {kind:<5} num_proc={procs:<4} ...", end=" ", flush=True)
            result = measure(kind, str(data), procs, str(work))
            result.update(rows_in_file=rows, num_proc=procs, file_mb=data.stat().st_size / 2**20)
            results.append(result)
            print(result.get("error") or f"{result['seconds']:6.1f} s  {result['rows_per_s']:8,.0f} rows/s  "
                  f"{result['tokens_per_s'] / 1e6:5.2f} M tok/s  peak RSS {result['peak_rss_mb']:6,.0f} MB", flush=True)
            if kind == "ours" and procs == "auto" and rows == sizes[-1]:
                cached = {"run": measure("ours", str(data), "auto", str(work)),
                          "train_path": measure("cached_train_path", str(data), str(work))}
                again, train_path = cached["run"], cached["train_path"]
                print(f"cached re-run of {rows:,} rows: prepare_data {again.get('seconds', -1):.2f} s (data key "
                      f"{again.get('key_s', -1):.2f} s; the process with its imports "
                      f"{again.get('process_s', -1):.1f} s), train() path {train_path.get('seconds', -1):.2f} s",
                      flush=True)
    return {"results": results, "cached_rerun": cached, "cores": cores}


def summarize(report: dict) -> dict:
    by = {(r["rows_in_file"], r["kind"], r["num_proc"]): r for r in report["results"] if "error" not in r}
    sizes = sorted({r["rows_in_file"] for r in report["results"]})
    cores = str(report["cores"])
    out: dict = {"speedup_auto_vs_1": {}, "auto_vs_floor": {}}
    for n in sizes:
        auto, one, floor = by.get((n, "ours", "auto")), by.get((n, "ours", "1")), by.get((n, "floor", cores))
        if auto and one:
            out["speedup_auto_vs_1"][n] = one["seconds"] / auto["seconds"]
        if auto and floor:
            out["auto_vs_floor"][n] = floor["seconds"] / auto["seconds"]
    for procs in ("1", "auto"):
        small, large = by.get((sizes[0], "ours", procs)), by.get((sizes[-1], "ours", procs))
        if small and large:
            out[f"rss_largest_over_smallest_num_proc_{procs}"] = large["peak_rss_mb"] / small["peak_rss_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k and 60k rows")
    parser.add_argument("--sizes", nargs="+", type=int, help=f"rows per file (default {SIZES})")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest, out = args.child
        fn = {"ours": child_ours, "floor": child_floor, "cached_train_path": child_ours_cached_train_path}[kind]
        Path(out).write_text(json.dumps(fn(*rest)))
        return
    started, load = time.time(), os.getloadavg()
    print(f"load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {usable_cores()} usable cores")
    with tempfile.TemporaryDirectory(prefix="data-scale-") as root:
        report = run_all(tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES)), Path(root))
    report["summary"] = summarize(report)
    report["machine"] = {"platform": platform.platform(), "processor": _cpu_model(), "cpus": os.cpu_count(),
                         "load_before": load, "load_after": os.getloadavg()}
    report["wall_s"] = time.time() - started
    print(json.dumps(report["summary"], indent=1))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = "data_scale" if tuple(args.sizes or SIZES) == SIZES and not args.quick else "data_scale-partial"
    for path in (RESULTS / f"{name}-{stamp}.json", RESULTS / f"{name}-latest.json"):
        path.write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / f'{name}-latest.json'} in {report['wall_s'] / 60:.1f} min")


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
