"""sft_core against TRL's SFTTrainer (defaults, and packing=True) and a hand-written PyTorch loop.

    python -m benchmarks.vs_trl            # ~14 min on 2 CPU cores; needs `pip install -e .[bench]`
    python -m benchmarks.vs_trl --quick    # fewer timed steps, no flow timing: a smoke run
    python -m benchmarks.vs_trl --workloads smollm2_gpu --contenders ours ours_ckpt trl   # on a CUDA GPU

Every number is measured in this run, on this machine, side by side: each contender trains the
same model folder on the same rows with the same seed, batch size, sequence length, learning rate
and number of steps, in a process of its own. Prints a table and writes benchmarks/results/*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.workloads import GPU_WORKLOADS, WORKLOADS, Workload, build_model_folder

RESULTS = Path(__file__).with_name("results")
# Memory variants of ours, run on the varlen workload only (the demo's activations are a few MB):
# ours_one_pass: train.tokens_per_pass=None, each batch in one forward/backward (the default splits it on the CPU);
# ours_selective: train.gradient_checkpointing="selective": recompute only the elementwise ops;
# ours_ckpt: ours with gradient checkpointing, which TRL turns on by default: the memory-for-speed trade made alike.
MEMORY_VARIANTS = ("ours_one_pass", "ours_selective", "ours_ckpt")
CONTENDERS = ("ours", *MEMORY_VARIANTS, "trl", "trl_packing", "plain")


def run_contender(name: str, workload: Workload, model_dir: Path, timeout_s: float = 1200) -> dict:
    out = Path(tempfile.mkdtemp()) / "result.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.contenders", name, workload.to_json(), str(model_dir),
                               str(out)], env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"contender": name, "workload": workload.name, "error": f"did not finish within {timeout_s:.0f}s"}
    if proc.returncode != 0:
        return {"contender": name, "workload": workload.name, "error": proc.stderr[-2000:]}
    return json.loads(out.read_text())


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul with this process's threads (best of `repeats`)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def cuda_matmul_peak(n: int = 8192, warmup: int = 3, repeats: int = 10, device: str = "cuda") -> float:
    """Achieved bf16 TFLOP/s of an n x n x n matmul on this GPU: the denominator of MFU, measured in the same run
    (the datasheet's dense peak is rarely reached; an H200 gives ~790). Mean of ``repeats`` after ``warmup``."""
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(warmup):
        a @ b
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def flops_per_token(params: int) -> float:
    """6N: forward + backward of the dense layers (attention scores add a few % at these lengths)."""
    return 6.0 * params


def generation_speed(n_prompts: int = 64, new_tokens: int = 16) -> dict:
    from sft_core.data.formats import prompt_segments
    from sft_core.data.prepare import encode_prompt
    from sft_core.embedded import build_byte_tokenizer, build_tiny_llama, make_demo_split
    from sft_core.generation import generate_texts

    tok, model = build_byte_tokenizer(), build_tiny_llama(0)
    prompts = [encode_prompt(prompt_segments(p), tok) for p, _ in make_demo_split(2000).held_out[:n_prompts]]
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    timings = {}
    for label, batch in (("batched", n_prompts), ("one_at_a_time", 1)):
        generate_texts(model, tok, prompts[:2], kwargs, batch_size=batch)  # warm-up
        t = time.perf_counter()
        generate_texts(model, tok, prompts, kwargs, batch_size=batch)
        timings[label] = n_prompts * new_tokens / (time.perf_counter() - t)
    return {"prompts": n_prompts, "new_tokens": new_tokens, "batched_tokens_per_s": timings["batched"],
            "one_at_a_time_tokens_per_s": timings["one_at_a_time"],
            "ratio": timings["batched"] / timings["one_at_a_time"]}


def data_prep_speed(rows: int = 100_000) -> dict:
    from sft_core.data.prepare import prepare_samples
    from sft_core.embedded import build_byte_tokenizer, make_demo_split

    tok = build_byte_tokenizer()
    samples = [list(p) for p in make_demo_split(rows, held_out_fraction=0.0001).train]
    cache = tempfile.mkdtemp()
    t = time.perf_counter()
    prepare_samples(samples, tok, seq_length=64, truncation_side="right", cache_dir=cache)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    cached = prepare_samples(samples, tok, seq_length=64, truncation_side="right", cache_dir=cache)
    warm = time.perf_counter() - t
    assert cached.stats.cached
    return {"rows": len(samples), "cold_s": cold, "cached_s": warm}


def flow_overhead(steps: int, repeats: int = 3) -> dict:
    """Wall time of `python -m flows.sft` against `python -m sft_core train`, same config, back to back.

    The first pair runs in new folders, as on a new machine: Prefect and MLflow create their databases
    then. The next `repeats` pairs reuse the folders, as every later run does; the overhead is their median.
    """
    sets = ["--set", f"train.total_steps={steps}", "--set", f"train.eval_interval={steps}"]
    commands = {"bare": [sys.executable, "-m", "sft_core", "train", *sets],
                "flow": [sys.executable, "-m", "flows.sft", *sets]}
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "MLFLOW_TRACKING_URI": ""}
    env.pop("PREFECT_API_URL", None)
    pairs = []
    for _ in range(1 + repeats):
        timings = {}
        for label, cmd in commands.items():
            t = time.perf_counter()
            (work / label).mkdir(exist_ok=True)  # each its own folder and tokenized-data cache
            proc = subprocess.run(cmd, cwd=work / label, env={**env, "SFTFLOW_CACHE": str(work / label / "cache")},
                                  capture_output=True, text=True, timeout=1200)
            timings[label] = time.perf_counter() - t
            if proc.returncode != 0:
                return {"error": f"{label}: {proc.stderr[-2000:]}"}
        pairs.append(timings)
    later = sorted(pairs[1:], key=lambda p: p["flow"] - p["bare"])[len(pairs[1:]) // 2]
    return {"steps": steps, "first_run": {**pairs[0], "overhead_s": pairs[0]["flow"] - pairs[0]["bare"]},
            "bare_s": later["bare"], "flow_s": later["flow"], "overhead_s": later["flow"] - later["bare"],
            "pairs": pairs}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(results: list[dict], peak_fp32: float, peak_bf16_tflops: float | None = None) -> dict:
    """Ratios ours/other per workload; MFU of CPU rows against the fp32 matmul peak (GFLOP/s), of GPU rows
    against ``peak_bf16_tflops`` (6N x all non-padding tokens/s: the FLOPs actually spent)."""
    by = {(r["workload"], r["contender"]): r for r in results}
    summary = {}
    for name in {r["workload"] for r in results}:
        row = {}
        for mine, other in (("ours", "trl"), ("ours", "trl_packing"), ("ours", "plain"), ("ours_one_pass", "trl"),
                            ("ours_selective", "trl"), ("ours_ckpt", "trl")):
            ours, them = by.get((name, mine), {}), by.get((name, other), {})
            if not ours or not them or "error" in ours or "error" in them:
                continue
            row[f"{mine}_vs_{other}"] = {
                "tokens_per_s": ratio(ours["target_tokens_per_s"], them["target_tokens_per_s"]),
                "peak_rss": ratio(ours["peak_rss_mb"], them["peak_rss_mb"]),
                "time_to_first_step": ratio(ours["time_to_first_step_s"], them["time_to_first_step_s"]),
                "eval_loss": ratio(ours["eval_loss"], them["eval_loss"]),
            }
        ours = by.get((name, "ours"), {})
        if "target_tokens_per_s" in ours and ours.get("device", "cpu") == "cpu":
            row["ours_mfu_fp32"] = ours["target_tokens_per_s"] * flops_per_token(ours["params"]) / (peak_fp32 * 1e9)
        for (workload, contender), r in by.items():
            if workload == name and r.get("device") == "cuda" and "tokens_per_s" in r and peak_bf16_tflops:
                flops = r["tokens_per_s"] * flops_per_token(r["params"])
                row[f"{contender}_mfu_bf16"] = flops / (peak_bf16_tflops * 1e12)
        summary[name] = row
    return summary


def print_table(results: list[dict], summary: dict) -> None:
    print(f"\n{'workload':8} {'contender':14} {'target tok/s':>12} {'first step s':>12} {'peak RSS MB':>11} "
          f"{'eval loss':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['workload']:8} {r['contender']:14} ERROR: {r['error'].strip().splitlines()[-1][:80]}")
            continue
        gpu = f"  peak GPU {r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") else ""
        loss = f"{r['eval_loss']:9.4f}" if r["eval_loss"] is not None else f"{'nan':>9}"
        print(f"{r['workload']:8} {r['contender']:14} {r['target_tokens_per_s']:12.0f} {r['time_to_first_step_s']:12.1f}"
              f" {r['peak_rss_mb']:11.0f} {loss}{gpu}")
    print("\nratios ours / other (tokens/s: higher is better; RSS, first step, eval loss: lower is better)")
    for name, row in summary.items():
        for key, vals in row.items():
            if isinstance(vals, dict):
                shown = "  ".join(f"{k}={v:.2f}" for k, v in vals.items() if v is not None)
                print(f"  {name:8} {key:22} {shown}")
        if "ours_mfu_fp32" in row:
            print(f"  {name:8} MFU (fp32 peak)   {row['ours_mfu_fp32']:.1%}")
        for key in (k for k in row if k.endswith("_mfu_bf16")):
            print(f"  {name:8} {key.removesuffix('_mfu_bf16'):14} MFU (measured bf16 peak) {row[key]:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows, skip the flow timing")
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=[*WORKLOADS, *GPU_WORKLOADS])
    parser.add_argument("--contenders", nargs="*", default=list(CONTENDERS))
    args = parser.parse_args()
    started = time.time()
    torch.set_num_threads(torch.get_num_threads())
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16, n=512, repeats=2)}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    if any(name in GPU_WORKLOADS for name in args.workloads):
        peaks["cuda_bf16_tflops"] = cuda_matmul_peak()
        print(f"GPU bf16 matmul: {peaks['cuda_bf16_tflops']:.0f} TFLOP/s ({torch.cuda.get_device_name()})")

    results = []
    with tempfile.TemporaryDirectory() as models:
        for name in args.workloads:
            workload = {**WORKLOADS, **GPU_WORKLOADS}[name]
            if args.quick:
                workload = replace(workload, window_steps=max(2, workload.window_steps // 4))
            model_dir = build_model_folder(workload.model, Path(models) / workload.model)
            for contender in args.contenders:
                if contender in MEMORY_VARIANTS and workload.data == "demo":
                    continue
                print(f"running {contender} on {name} ...", flush=True)
                results.append(run_contender(contender, workload, model_dir))
    summary = summarize(results, peaks["fp32"], peaks.get("cuda_bf16_tflops"))
    print_table(results, summary)

    extras = {"generation": generation_speed(), "data_prep": data_prep_speed()}
    if not args.quick:
        extras["flow_overhead"] = flow_overhead(steps=200)
    gen, prep = extras["generation"], extras["data_prep"]
    print(f"\neval generation, {gen['prompts']} prompts x {gen['new_tokens']} tokens: batched "
          f"{gen['batched_tokens_per_s']:.0f} tok/s vs one at a time {gen['one_at_a_time_tokens_per_s']:.0f} tok/s "
          f"= {gen['ratio']:.1f}x")
    print(f"data prep, {prep['rows']} rows: cold {prep['cold_s']:.1f}s, cached {prep['cached_s']:.2f}s")
    if "flow_overhead" in extras:
        flow = extras["flow_overhead"]
        first = flow.get("first_run", {})
        print("flow overhead: " + (flow["error"][-300:] if "error" in flow else
              f"{flow['flow_s']:.1f}s flow vs {flow['bare_s']:.1f}s bare trainer = +{flow['overhead_s']:.1f}s "
              f"(median of later runs; first run on a new machine +{first['overhead_s']:.1f}s; {flow['steps']} steps)"))

    report = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__},
              "matmul_peak_gflops": peaks, "results": results, "summary": summary, **extras,
              "wall_s": time.time() - started}
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (RESULTS / f"vs_trl-{stamp}.json", RESULTS / "vs_trl-latest.json"):
        path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {RESULTS / 'vs_trl-latest.json'} in {report['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
