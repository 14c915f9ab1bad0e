"""One contender on one workload, in a process of its own (so peak RSS and start-up are its own).

    python -m benchmarks.contenders CONTENDER WORKLOAD_JSON MODEL_DIR OUT_JSON

CONTENDER: ours, ours_one_pass, ours_selective, ours_ckpt, trl, trl_packing or plain.

Writes: time to first step (from process start), per-step timestamps and target-token counts,
tokens/s of each timed window (target tokens, and all non-padding tokens), held-out loss after training
(one shared evaluation), peak RSS, and on a GPU workload the peak GPU memory.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil

PROCESS_START = psutil.Process().create_time()  # wall clock, so imports count toward start-up

import torch  # noqa: E402

from benchmarks.workloads import Workload, load_pairs  # noqa: E402


def heldout_loss(model, tokenizer, pairs, seq_length: int) -> float:
    """Mean next-token loss on completion tokens (+EOS) of the held-out pairs. Same code for everyone."""
    from sft_core.data.batching import collate
    from sft_core.data.prepare import prepare_samples
    from sft_core.losses import token_loss_sum

    rows = prepare_samples([list(p) for p in pairs], tokenizer, seq_length=seq_length, truncation_side="right",
                           cache_dir=tempfile.mkdtemp()).dataset
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            cols = rows[start : start + 16]
            loss_sum, n = token_loss_sum(model, collate(cols["input_ids"], cols["labels"], tokenizer.pad_token_id),
                                         device)
            total += float(loss_sum)
            count += n
    return total / max(count, 1)


class StepClock:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.targets: list[int] = []
        self.tokens: list[float] = []  # cumulative non-padding tokens (prompt and target): what the FLOPs are spent on
        self.peak_rss_mb = 0.0  # the process's peak at the end of the last step: training's own, before the shared eval
        self.peak_gpu_mb: float | None = None  # likewise, torch.cuda.max_memory_allocated, on a GPU workload

    def tick(self, cumulative_targets: int, cumulative_tokens: float) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the step's kernels are done when its time is taken
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        self.times.append(time.time())
        self.targets.append(cumulative_targets)
        self.tokens.append(cumulative_tokens)
        self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(w: Workload, model_dir: str, train, clock: StepClock, checkpointing: bool | str = False,
             tokens_per_pass: int | str | None = "auto"):
    from sft_core import default_sft_config
    from sft_core import train as sft_train

    work = Path(tempfile.mkdtemp())
    config = default_sft_config().evolve(
        model=dict(model_path=model_dir),
        train=dict(seq_length=w.seq_length, batch_size=w.batch_size, total_steps=w.total_steps, seed=w.seed,
                   eval_interval=10**9, checkpoint_interval=10**9, log_interval=1, save_best=False,
                   gradient_checkpointing=checkpointing, tokens_per_pass=tokens_per_pass,
                   checkpoint_dir=str(work / "ck"), logging_dir=str(work / "logs"),
                   mixed_precision="bf16" if w.bf16 else "no"),
        distributed=dict(use_cpu=w.device == "cpu"),
        optimizer=dict(name="adamw", kwargs=dict(lr=w.lr, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0)),
        scheduler=dict(name="linear_with_warmup", warmup_steps=0, min_lr_ratio=0.0),
        method=dict(metrics=[]), data=dict(cache_dir=str(work / "cache")),
    )

    seen = {"targets": 0, "tokens": 0.0}

    def on_event(event, payload):
        if event == "log":  # every step (log_interval=1): this step's tokens from its tokens/targets ratio
            metrics = payload["metrics"]
            new_targets = payload["target_tokens_seen"] - seen["targets"]
            ratio = metrics["train/tokens_per_s"] / max(metrics["train/target_tokens_per_s"], 1e-9)
            seen["targets"], seen["tokens"] = payload["target_tokens_seen"], seen["tokens"] + new_targets * ratio
            clock.tick(seen["targets"], seen["tokens"])

    trainer = sft_train(samples=[list(p) for p in train], config=config, callbacks=[on_event])
    return trainer.accelerator.unwrap_model(trainer.model), trainer.tokenizer


def run_trl(w: Workload, model_dir: str, train, clock: StepClock, packing: bool):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(  # TRL's defaults, except what every contender shares
        output_dir=tempfile.mkdtemp(), use_cpu=w.device == "cpu", bf16=w.bf16, max_length=w.seq_length, packing=packing,
        per_device_train_batch_size=w.batch_size, learning_rate=w.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_steps=w.total_steps, seed=w.seed, save_strategy="no", report_to=[], logging_steps=10**6,
        disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"prompt": p, "completion": c} for p, c in train])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    tick_at_trl_steps(trainer, clock)
    trainer.train()
    return trainer.model, tokenizer


def tick_at_trl_steps(trainer, clock) -> None:
    """Tick ``clock`` with the cumulative target tokens at the end of each TRL step: the collator counts
    each batch's targets (batch k is collated before step k ends), a callback reads them."""
    from transformers import TrainerCallback

    seen, tokens = [0], [0]
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        seen.append(seen[-1] + int((batch["labels"][:, 1:] != -100).sum()))
        mask = batch.get("attention_mask")
        tokens.append(tokens[-1] + int(mask.sum() if mask is not None else batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick(seen[state.global_step], tokens[state.global_step])

    trainer.add_callback(Clock())


def run_plain(w: Workload, model_dir: str, train, clock: StepClock):
    """The floor: a hand-written loop, dynamic padding, per-batch mean loss, no framework."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_core.data.batching import collate
    from sft_core.data.prepare import prepare_samples
    from sft_core.losses import token_loss_sum

    torch.manual_seed(w.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(w.device)
    autocast = torch.autocast(w.device, dtype=torch.bfloat16, enabled=w.bf16)
    rows = prepare_samples([list(p) for p in train], tokenizer, seq_length=w.seq_length, truncation_side="right",
                           cache_dir=tempfile.mkdtemp()).dataset
    order = list(range(len(rows)))
    random.Random(w.seed).shuffle(order)
    optimizer = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / w.total_steps)
    model.train()
    seen, tokens = 0, 0
    for step in range(w.total_steps):
        cols = rows[order[step * w.batch_size : (step + 1) * w.batch_size]]
        with autocast:
            loss_sum, n = token_loss_sum(model, collate(cols["input_ids"], cols["labels"], tokenizer.pad_token_id),
                                         w.device)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        seen += n
        tokens += sum(len(ids) for ids in cols["input_ids"])
        clock.tick(seen, tokens)
    return model, tokenizer


def window_rates(w: Workload, clock: StepClock, counts: list[float] | None = None) -> list[float]:
    """Tokens/s of each timed window (after the warm-up steps): target tokens, or ``counts`` (cumulative)."""
    counts = clock.targets if counts is None else counts
    rates = []
    for k in range(w.windows):
        a = w.warmup_steps + k * w.window_steps - 1  # index of the step that ends just before the window
        b = a + w.window_steps
        rates.append((counts[b] - counts[a]) / (clock.times[b] - clock.times[a]))
    return rates


def main() -> None:
    name, workload_json, model_dir, out = sys.argv[1:5]
    w = Workload(**json.loads(workload_json))
    torch.manual_seed(w.seed)
    train, held_out = load_pairs(w.data, w.seed)
    clock = StepClock()
    runners = {
        "ours": lambda: run_ours(w, model_dir, train, clock),
        "ours_one_pass": lambda: run_ours(w, model_dir, train, clock, tokens_per_pass=None),
        "ours_ckpt": lambda: run_ours(w, model_dir, train, clock, checkpointing=True),
        "ours_selective": lambda: run_ours(w, model_dir, train, clock, checkpointing="selective"),
        "trl": lambda: run_trl(w, model_dir, train, clock, packing=False),
        "trl_packing": lambda: run_trl(w, model_dir, train, clock, packing=True),
        "plain": lambda: run_plain(w, model_dir, train, clock),
    }
    model, tokenizer = runners[name]()
    assert len(clock.times) == w.total_steps, f"{name}: recorded {len(clock.times)} of {w.total_steps} steps"
    loss = heldout_loss(model, tokenizer, held_out, w.seq_length)
    rates = window_rates(w, clock)
    token_rates = window_rates(w, clock, clock.tokens)
    result = {
        "contender": name, "workload": w.name, "device": w.device, "bf16": w.bf16,
        "time_to_first_step_s": clock.times[0] - PROCESS_START,
        "target_tokens_per_s": sorted(rates)[len(rates) // 2], "window_rates": rates,
        "tokens_per_s": sorted(token_rates)[len(token_rates) // 2],
        "peak_gpu_mb": clock.peak_gpu_mb,
        "eval_loss": loss if math.isfinite(loss) else None,
        "peak_rss_mb": clock.peak_rss_mb,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # incl. the held-out eval
        "steps": w.total_steps, "target_tokens": clock.targets[-1],
        "params": sum(p.numel() for p in model.parameters()),
    }
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
