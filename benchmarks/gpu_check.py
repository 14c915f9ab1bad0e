"""The GPU check's measurements: what scripts/gpu_check.sh runs after the GPU tests on a lent CUDA machine.

    python -m benchmarks.gpu_check                 # on a CUDA GPU, ~2-3 min
    python -m benchmarks.gpu_check --dry-run       # tiny sizes on the CPU: the same plumbing, in ~1 min

1. the machine: GPU, torch and CUDA, the libraries' versions;
2. achieved bf16 matmul TFLOP/s, measured now (the MFU denominator);
3. a SmolLM2-135M-shaped Llama (its config, random weights: nothing downloaded) trained by sft_core with LoRA and
   with full fine-tuning under bf16 autocast: held-out loss before/after, train loss, tokens/s, peak GPU memory,
   MFU = 6 N tokens/s / peak (N: all the model's weights; tokens: every non-padding token);
4. benchmarks.vs_trl's smollm2_gpu workload: ours (and ours with gradient checkpointing, which TRL turns on by
   default) against TRL's SFTTrainer where TRL is installed, tokens/s and MFU against the same peak.

Writes gpu_check.json and gpu_check.txt (a short summary) to --out, else $OUT, else benchmarks/results/.
A stage that fails is recorded under "errors" and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.vs_trl import cuda_matmul_peak, flops_per_token, run_contender, summarize
from benchmarks.workloads import GPU_WORKLOADS, build_model_folder, load_pairs

RESULTS = Path(__file__).with_name("results")
LIBRARIES = ("torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "safetensors", "pydantic", "trl")
LORA = dict(peft_type="LORA", task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def versions() -> dict[str, str | None]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cuda_available": torch.cuda.is_available(), "versions": versions()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    gpu_count=torch.cuda.device_count())
    return info


def bf16_peak(dry_run: bool) -> float:
    """TFLOP/s of a bf16 matmul on this GPU (on the CPU in a dry run, tiny)."""
    if dry_run:
        return cuda_matmul_peak(n=256, warmup=1, repeats=2, device="cpu")
    return cuda_matmul_peak()


def train_case(method: str, model_dir: Path, pairs: tuple[list, list], *, steps: int, dry_run: bool,
               work: Path, peak_tflops: float) -> dict[str, Any]:
    """Train the model folder with sft_core (LoRA or full), in this process; tokens/s, memory, losses, MFU."""
    from sft_core import default_sft_config, train
    from sft_core.tracking import read_history

    train_rows, held_out = pairs
    lora = method == "lora"
    folder = work / method
    config = default_sft_config().evolve(
        # LoRA: the frozen base in bf16 (peft keeps the adapter's weights in fp32); full: fp32 master weights.
        model=dict(model_path=str(model_dir), dtype="bfloat16" if lora and not dry_run else "float32",
                   peft_config=LORA if lora else None),
        train=dict(seq_length=64 if dry_run else 512, batch_size=4 if dry_run else 16, total_steps=steps,
                   eval_interval=10**9, checkpoint_interval=10**9, log_interval=max(1, steps // 6), save_best=False,
                   mixed_precision="no" if dry_run else "bf16", tokens_per_pass=None, seed=0,
                   checkpoint_dir=str(folder / "checkpoints"), logging_dir=str(folder / "logs")),
        optimizer=dict(name="adamw", kwargs=dict(lr=2e-3 if lora else 3e-4, betas=[0.9, 0.95], eps=1e-8,
                                                 weight_decay=0.0)),
        scheduler=dict(name="cosine_with_warmup", warmup_steps=max(1, steps // 10)),
        method=dict(metrics=[]), data=dict(cache_dir=str(folder / "cache")),
        distributed=dict(use_cpu=dry_run),
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer = train(samples=[list(p) for p in train_rows], eval_samples=[list(p) for p in held_out], config=config)
    wall = time.perf_counter() - started
    device = str(trainer.accelerator.device)
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    history = read_history(folder / "logs" / "metrics.jsonl")
    train_rows_logged = [h for h in history if "train/loss" in h]
    evals = [h for h in history if "eval/loss" in h]
    # The first log window holds the warm-up (CUDA context, kernel selection, allocator growth): leave it out.
    timed = train_rows_logged[1:] or train_rows_logged
    tokens_per_s = sum(h["train/tokens_per_s"] for h in timed) / len(timed)
    result = {
        "method": method, "device": device, "steps": trainer.summary.steps, "params": params, "trainable": trainable,
        "weights_dtype": config.model.dtype, "mixed_precision": config.train.mixed_precision,
        "batch_size": config.train.batch_size, "seq_length": config.train.seq_length,
        "eval_loss_before": evals[0]["eval/loss"] if evals else None,
        "eval_loss_after": evals[-1]["eval/loss"] if evals else None,
        "train_loss_first": train_rows_logged[0]["train/loss"], "train_loss_last": train_rows_logged[-1]["train/loss"],
        "tokens_per_s": tokens_per_s,
        "target_tokens_per_s": sum(h["train/target_tokens_per_s"] for h in timed) / len(timed),
        "train_seconds": trainer.summary.train_seconds, "wall_s": wall,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        # 6N per token as for full training; LoRA skips the frozen weights' gradient matmuls (~4N of real work),
        # so its 6N figure overstates what the hardware did by up to 1.5x (mfu_4n is the lower reading).
        "mfu": tokens_per_s * flops_per_token(params) / (peak_tflops * 1e12),
    }
    if lora:
        result["mfu_4n"] = tokens_per_s * 4 * params / (peak_tflops * 1e12)
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def vs_trl_row(dry_run: bool, peak_tflops: float, work: Path, timeout_s: float) -> dict[str, Any]:
    """ours / ours_ckpt / trl on the smollm2_gpu workload, each in its own process (benchmarks.contenders)."""
    workload = GPU_WORKLOADS["smollm2_gpu"]
    if dry_run:
        workload = replace(workload, model="tiny_gqa", device="cpu", bf16=False, seq_length=64, batch_size=4,
                           warmup_steps=1, window_steps=2, windows=2)
    contenders = ["ours", "ours_ckpt"]
    have_trl = importlib.util.find_spec("trl") is not None
    if have_trl:
        contenders.append("trl")
    model_dir = build_model_folder(workload.model, work / f"vs-trl-{workload.model}")
    results = [run_contender(name, workload, model_dir, timeout_s=timeout_s) for name in contenders]
    for r in results:
        if "tokens_per_s" in r:
            r["mfu"] = r["tokens_per_s"] * flops_per_token(r["params"]) / (peak_tflops * 1e12)
    return {"workload": workload.name, "settings": json.loads(workload.to_json()), "results": results,
            "summary": summarize(results, peak_fp32=float("nan"), peak_bf16_tflops=peak_tflops).get(workload.name, {}),
            "trl": "installed" if have_trl else "not installed: no TRL row"}


def run_stage(report: dict, name: str, fn: Callable[[], Any], out: Path) -> Any:
    """Run one stage; a failure is recorded and the next stage runs. The report is rewritten after every stage,
    so a run cut off by its deadline (a lent GPU's minutes are few) still leaves what it measured."""
    print(f"[gpu_check] {name} ...", flush=True)
    started = time.perf_counter()
    try:
        value = fn()
    except Exception as err:  # noqa: BLE001 - a failed stage is reported, and the next one runs
        report["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
        print(f"[gpu_check] {name} FAILED: {type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}", flush=True)
        value = None
    else:
        print(f"[gpu_check] {name} done in {time.perf_counter() - started:.1f}s", flush=True)
    report.setdefault("stages_done", []).append(name)
    write_report(report, out)
    return value


def write_report(report: dict, out: Path) -> None:
    report["wall_s"] = time.time() - report["started"]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.txt").write_text(summary_text(report))


def summary_text(report: dict) -> str:
    m = report["machine"]
    lines = [f"gpu_check ({'CPU dry run, tiny sizes' if report['dry_run'] else 'GPU'}) "
             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(report['started']))} UTC, {report['wall_s']:.0f} s",
             f"machine: {m.get('gpu', 'no GPU')} | torch {m['versions']['torch']} CUDA {m.get('cuda')} | "
             f"transformers {m['versions']['transformers']} accelerate {m['versions']['accelerate']} "
             f"peft {m['versions']['peft']} trl {m['versions']['trl']}"]
    if report.get("peak_bf16_tflops"):
        lines.append(f"bf16 matmul peak (measured): {report['peak_bf16_tflops']:.1f} TFLOP/s")
    for case in report.get("train", {}).values():
        mem = f", peak GPU mem {case['peak_gpu_mb'] / 1024:.2f} GiB" if case.get("peak_gpu_mb") else ""
        lines.append(
            f"{case['method']:4} ({case['params'] / 1e6:.1f}M params, {case['trainable'] / 1e6:.2f}M trainable, "
            f"{case['weights_dtype']} weights, mixed_precision {case['mixed_precision']}): {case['steps']} steps, "
            f"eval loss {_num(case['eval_loss_before'])} -> {_num(case['eval_loss_after'])}, "
            f"{case['tokens_per_s']:.0f} tok/s, MFU {case['mfu']:.1%}{mem}")
    row = report.get("vs_trl")
    if row:
        for r in row["results"]:
            if "error" in r:
                lines.append(f"vs_trl {r['contender']:9}: ERROR {r['error'].strip().splitlines()[-1][:120]}")
                continue
            mem = f", peak GPU mem {r['peak_gpu_mb'] / 1024:.2f} GiB" if r.get("peak_gpu_mb") else ""
            lines.append(f"vs_trl {r['contender']:9}: {r['tokens_per_s']:.0f} tok/s ({r['target_tokens_per_s']:.0f} "
                         f"target tok/s), MFU {r.get('mfu', 0):.1%}{mem}")
        for key, vals in row["summary"].items():
            if isinstance(vals, dict) and vals.get("tokens_per_s") is not None:
                lines.append(f"vs_trl {key}: target tokens/s ratio {vals['tokens_per_s']:.2f}")
        if row["trl"] != "installed":
            lines.append(f"vs_trl: TRL {row['trl']}")
    for stage, error in report["errors"].items():
        lines.append(f"FAILED {stage}: {error.splitlines()[0][:200]}")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def output_dir(given: str | None) -> Path:
    return Path(given or os.environ.get("OUT") or RESULTS)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: test the plumbing")
    parser.add_argument("--out", help="folder for gpu_check.json/.txt (default: $OUT, else benchmarks/results)")
    parser.add_argument("--steps", type=int, help="optimizer steps per training case (default 30; dry run 3)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "vs_trl"], help="stages to leave out")
    parser.add_argument("--contender-timeout", type=float, default=60.0,
                        help="seconds per vs_trl contender (3 contenders: keep the stages within CHECK_TIMEOUT)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run on a GPU machine, or pass --dry-run to test the plumbing on the CPU")
    steps = args.steps or (3 if args.dry_run else 30)
    out = output_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.time(), "dry_run": args.dry_run, "errors": {}, "machine": machine()}
    report["peak_bf16_tflops"] = run_stage(report, "bf16_peak", lambda: bf16_peak(args.dry_run), out)
    peak = report["peak_bf16_tflops"] or float("nan")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        if "train" not in args.skip:
            shape = "tiny_gqa" if args.dry_run else "smollm2"
            model_dir = run_stage(report, "build_model", lambda: build_model_folder(shape, work / shape), out)
            pairs = load_pairs("varlen", seed=0)
            if args.dry_run:
                pairs = (pairs[0][:200], pairs[1][:8])
            report["train"] = {}
            for method in ("lora", "full"):
                if model_dir is None:
                    break
                case = run_stage(report, f"train_{method}", lambda m=method: train_case(
                    m, model_dir, pairs, steps=steps, dry_run=args.dry_run, work=work, peak_tflops=peak), out)
                if case is not None:
                    report["train"][method] = case
        if "vs_trl" not in args.skip:
            report["vs_trl"] = run_stage(report, "vs_trl", lambda: vs_trl_row(args.dry_run, peak, work,
                                                                                args.contender_timeout), out)
    write_report(report, out)
    print("\n" + summary_text(report) + f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.txt'}", flush=True)
    return report


if __name__ == "__main__":
    raise SystemExit(1 if main()["errors"] else 0)
