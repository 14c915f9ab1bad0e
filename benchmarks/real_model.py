"""SmolLM2-135M-Instruct on the invented-facts chat data: full fine-tuning vs LoRA, and ours vs TRL.

    python -m benchmarks.real_model [--steps 20] [--repeats 3] [--out benchmarks/results/real_model.json]

Each contender runs in a process of its own (so peak RSS is its own), on the same rows, batch size,
max length, learning rate, seed and LoRA config, and TRL gets ours' batches in ours' order (its sampler
is swapped for ours' row order), so the held-out losses are comparable:
  ours_full   sft_core, every weight trains
  ours_lora   sft_core, model.peft_config = LORA below
  trl_lora    TRL SFTTrainer(peft_config=LoraConfig(**LORA)), prompt-completion chat rows (loss on
              the assistant turn, as ours), no packing (ours packs; TRL's packing is another row)
Reported: s/step and target tokens/s (median of the timed steps after warm-up; with --repeats, the
median over round-robin runs, since a shared machine's speed drifts by 30% over minutes), peak RSS
at the end of training, trainable parameters, held-out loss (one shared evaluation), each step's
training loss, and a fingerprint of the LoRA weights at the start. The model comes from
`python -m sft_core fetch-example-model` (cached).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "configs" / "examples"
# lora_dropout 0: dropout masks depend on tensor shapes (ours packs rows, TRL pads them), so with
# dropout the two could never see the same updates and their losses would differ by chance alone.
LORA = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "target_modules": "all-linear"}
# batch 10 divides the 30 training rows: every batch is full, so TRL's batches line up with ours.
SETTINGS = dict(batch_size=10, seq_length=128, lr_full=1e-4, lr_lora=2e-3, warmup_steps=5, seed=0)


def chat_rows(name: str) -> list[list[dict]]:
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
    return [r["messages"] if "messages" in r else [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"],
            t["from"]), "content": t["value"]} for t in r["conversations"]] for r in rows]


def heldout_loss(model, tokenizer) -> float:
    """Mean loss on the held-out rows' assistant tokens; the same code for every contender."""
    import torch

    from sft_core.data.batching import collate
    from sft_core.data.prepare import prepare_samples
    from sft_core.losses import token_loss_sum

    rows = prepare_samples(chat_rows("invented_facts_heldout.jsonl"), tokenizer, seq_length=SETTINGS["seq_length"],
                           truncation_side="right", cache_dir=tempfile.mkdtemp()).dataset
    model.eval()
    with torch.no_grad():
        loss_sum, n = token_loss_sum(model, collate(rows["input_ids"], rows["labels"], tokenizer.pad_token_id), "cpu")
    return float(loss_sum) / n


class Clock:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.targets: list[int] = []
        self.peak_rss_mb = 0.0
        self.lora_init: float | None = None
        self.losses: list[float] = []  # training loss of each step, per target token

    def tick(self, cumulative_targets: int) -> None:
        self.times.append(time.perf_counter())
        self.targets.append(cumulative_targets)
        self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def on_log(clock: Clock, payload: dict) -> None:
    clock.tick(payload["target_tokens_seen"])
    clock.losses.append(payload["metrics"]["train/loss"])


def run_ours(model_dir: str, steps: int, lora: bool, clock: Clock):
    from sft_core import AccelerateSFTTrainer, default_sft_config, train

    work = Path(tempfile.mkdtemp())
    config = default_sft_config().evolve(
        model=dict(model_path=model_dir, peft_config=LORA if lora else None),
        train=dict(seq_length=SETTINGS["seq_length"], batch_size=SETTINGS["batch_size"], total_steps=steps,
                   seed=SETTINGS["seed"], eval_interval=10**9, checkpoint_interval=10**9, log_interval=1,
                   save_best=False, checkpoint_dir=str(work / "ck"), logging_dir=str(work / "logs")),
        optimizer=dict(kwargs=dict(lr=SETTINGS["lr_lora" if lora else "lr_full"], weight_decay=0.0)),
        scheduler=dict(name="linear_with_warmup", warmup_steps=0, min_lr_ratio=0.0), method=dict(metrics=[]),
        data=dict(path=None, cache_dir=str(work / "cache")),
    )
    class Fingerprinted(AccelerateSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clock.lora_init = lora_init_fingerprint(self.model) if lora else None

    trainer = train(samples=chat_rows("invented_facts_train.jsonl"), config=config, trainer_cls=Fingerprinted,
                    callbacks=[lambda event, p: on_log(clock, p) if event == "log" else None])
    return trainer.accelerator.unwrap_model(trainer.model), trainer.tokenizer


def our_row_order(num_rows: int, steps: int) -> list[int]:
    """The rows ours trains on, step after step (its epoch shuffles with the seed), flattened."""
    from sft_core.data.batching import BatchPosition, EpochBatchSampler

    batches = EpochBatchSampler(num_rows, SETTINGS["batch_size"], seed=SETTINGS["seed"]).iter_from(BatchPosition(0, 0))
    return [i for _, (_, rows) in zip(range(steps), batches) for i in rows]


def lora_init_fingerprint(model) -> float:
    """Sum of |lora_A| over the model: equal for two runs iff their adapters started alike (B starts at 0)."""
    return float(sum(p.detach().abs().sum() for n, p in model.named_parameters() if "lora_A" in n))


def run_trl(model_dir: str, steps: int, clock: Clock):
    import torch
    from datasets import Dataset
    from peft import get_peft_config
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from benchmarks.contenders import tick_at_trl_steps

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, max_length=SETTINGS["seq_length"], packing=False,
        per_device_train_batch_size=SETTINGS["batch_size"], learning_rate=SETTINGS["lr_lora"],
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_steps=steps, seed=SETTINGS["seed"],
        save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True, max_grad_norm=1.0,
        adam_beta2=0.95,
    )
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in chat_rows("invented_facts_train.jsonl")]
    order = our_row_order(len(rows), steps)

    class InOurOrder(SFTTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return order

    trainer = InOurOrder(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=get_peft_config(dict(LORA)))
    clock.lora_init = lora_init_fingerprint(trainer.model)
    tick_at_trl_steps(trainer, clock)

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))

    trainer.add_callback(Losses())
    trainer.train()
    return trainer.model, tokenizer


def contender(name: str, model_dir: str, steps: int, out: str) -> None:
    import torch

    torch.manual_seed(SETTINGS["seed"])
    clock = Clock()
    runners = {"ours_full": lambda: run_ours(model_dir, steps, False, clock),
               "ours_lora": lambda: run_ours(model_dir, steps, True, clock),
               "trl_lora": lambda: run_trl(model_dir, steps, clock)}
    model, tokenizer = runners[name]()
    w = SETTINGS["warmup_steps"]
    step_s = sorted(b - a for a, b in zip(clock.times[w - 1:], clock.times[w:]))
    rates = sorted((clock.targets[i] - clock.targets[i - 1]) / (clock.times[i] - clock.times[i - 1])
                   for i in range(w, len(clock.times)))
    Path(out).write_text(json.dumps({
        "contender": name, "steps": len(clock.times), "s_per_step": step_s[len(step_s) // 2],
        "target_tokens_per_s": rates[len(rates) // 2], "peak_rss_mb": clock.peak_rss_mb,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "eval_loss": heldout_loss(model, tokenizer),
        "lora_init_fingerprint": clock.lora_init,
        "train_losses": clock.losses,
    }, indent=1))


def median_run(runs: list[dict]) -> dict:
    """One contender's runs as one row: the median speed and the largest peak RSS (training is
    deterministic, so the losses are the same in every run)."""
    def median(key: str) -> float:
        return sorted(r[key] for r in runs)[len(runs) // 2]

    return {**runs[0], "s_per_step": median("s_per_step"), "target_tokens_per_s": median("target_tokens_per_s"),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--contenders", default="ours_full,ours_lora,trl_lora")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each contender, round-robin; medians reported")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_model.json"))
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # internal: run one contender in this process
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        contender(args.contender, args.model_dir, args.steps, args.result)
        return

    from sft_core.example_model import fetch_example_model

    model_dir = str(fetch_example_model())
    names = args.contenders.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeats):  # round-robin, so a slow spell of a shared machine hits every contender
        for name in names:
            result_file = tempfile.mktemp(suffix=".json")
            subprocess.run([sys.executable, "-m", "benchmarks.real_model", "--contender", name, "--model-dir",
                            model_dir, "--steps", str(args.steps), "--result", result_file], cwd=ROOT, check=True)
            runs[name].append(json.loads(Path(result_file).read_text()))
    results = [median_run(runs[name]) for name in names]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    report = {"cpu": cpu, "settings": SETTINGS, "lora": LORA, "steps": args.steps, "repeats": args.repeats,
              "results": results, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'contender':<10} {'s/step':>7} {'tok/s':>7} {'RSS MB':>7} {'trainable':>12} {'eval loss':>9}")
    for r in results:
        print(f"{r['contender']:<10} {r['s_per_step']:7.2f} {r['target_tokens_per_s']:7.0f} {r['peak_rss_mb']:7.0f} "
              f"{r['trainable_params']:12,} {r['eval_loss']:9.4f}")
    by_name = {r["contender"]: r for r in results}
    if {"ours_lora", "trl_lora"} <= by_name.keys():
        ours, trl = by_name["ours_lora"], by_name["trl_lora"]
        same_init = ours["lora_init_fingerprint"] == trl["lora_init_fingerprint"]
        print(f"\nours/TRL (LoRA): target tokens/s x{ours['target_tokens_per_s'] / trl['target_tokens_per_s']:.2f}, "
              f"peak RSS x{ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}, eval loss "
              f"{100 * (ours['eval_loss'] / trl['eval_loss'] - 1):+.1f}% (adapters started {'alike' if same_init else 'DIFFERENTLY'})")


if __name__ == "__main__":
    main()
