"""AccelerateSFTTrainer: trlX's SFT trainer, rebuilt as setup functions plus one visible loop.

The loop, top to bottom: take `gradient_accumulation_steps` micro-batches (each run as one or more
forward/backward passes of at most `tokens_per_pass` tokens), count their target tokens on every
rank, backprop each pass's summed loss divided by that global count, clip, step, schedule, log,
evaluate, checkpoint. Data order is a pure function of
(seed, epoch, batch index), so a resumed run replays exactly the batches the original would have.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator
from datasets import Dataset
from tqdm.auto import tqdm

from sft_core.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, rotate_checkpoints, save_checkpoint
from sft_core.config import SFTConfig
from sft_core.data.batching import BatchPosition, EpochBatchSampler, collate, micro_batches, pack
from sft_core.errors import ConfigError, TrainingError
from sft_core.evaluation import EvalPrompts, EvalResult, Evaluator
from sft_core.export import export_model
from sft_core.losses import token_loss_sum
from sft_core.metrics import MetricFn
from sft_core.modeling import resolve_tokens_per_pass
from sft_core.optim import build_optimizer, build_scheduler
from sft_core.plots import plot_training_curves
from sft_core.tracking import build_trackers, read_history

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"  # written to train.logging_dir at the end of learn()
Callback = Callable[[str, dict[str, Any]], None]  # (event, payload): "log", "eval", "checkpoint", "end"


@dataclass
class TrainerState:
    """Everything besides weights/optimizer/RNG that a resumed run needs. Saved as JSON."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # position of the next batch ...
    batch_in_epoch: int = 0  # ... in the seeded order
    target_tokens_seen: int = 0
    skipped_steps: int = 0  # non-finite losses skipped (train.on_nonfinite_loss="skip")
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    global_batch_size: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSummary:
    steps: int
    target_tokens_seen: int
    train_seconds: float
    target_tokens_per_s: float
    final_metrics: dict[str, float]
    last_checkpoint: str | None
    best_checkpoint: str | None
    best_metric: str | None
    best_value: float | None
    skipped_steps: int
    mlflow_run_id: str | None


class AccelerateSFTTrainer:
    def __init__(
        self,
        config: SFTConfig,
        *,
        accelerator: Accelerator,
        model: torch.nn.Module,
        tokenizer: Any,
        train_data: Dataset,
        eval_data: Dataset | None = None,
        eval_prompts: EvalPrompts | None = None,
        metric_fns: Sequence[MetricFn] = (),
        callbacks: Sequence[Callback] = (),
    ):
        self.config = config
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        self.train_data = train_data
        self.callbacks = list(callbacks)
        train = config.train
        lengths = [len(ids) for ids in train_data["input_ids"]] if train.group_by_length else None
        self.sampler = EpochBatchSampler(len(train_data), train.batch_size, seed=train.seed, lengths=lengths,
                                         rank=accelerator.process_index, world_size=accelerator.num_processes)
        self.total_steps = self._total_steps()
        _fill_deepspeed_batch_config(accelerator, config)
        self.tokens_per_pass = resolve_tokens_per_pass(train.tokens_per_pass, model,
                                                       on_cpu=accelerator.device.type == "cpu",
                                                       deepspeed=_is_deepspeed(accelerator))
        # DeepSpeed steps the optimizer on its own flat partitions: leave it the plain implementation.
        optimizer = build_optimizer(model.parameters(), config.optimizer, fused=not _is_deepspeed(accelerator))
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        # Not passed to prepare(): Accelerate would step it once per process per step.
        self.scheduler = build_scheduler(self.optimizer, config.scheduler, self.total_steps)
        self.evaluator = Evaluator(
            accelerator, tokenizer, config.method, eval_data=eval_data, prompts=eval_prompts, metric_fns=metric_fns,
            batch_size=config.method.eval_batch_size, pad_id=tokenizer.pad_token_id,
            log_samples=config.tracking.log_samples, synced_gpus=_is_zero3(accelerator),
        )
        self.state = TrainerState(global_batch_size=self.sampler.global_batch_size * train.gradient_accumulation_steps)
        self.checkpoint_dir = Path(train.checkpoint_dir)
        # Folders this run creates; removed again if it fails before its first checkpoint (nothing to resume).
        self._new_dirs = {_topmost_missing(Path(d)) for d in (train.checkpoint_dir, train.logging_dir)} - {None}
        self.trackers = build_trackers(config, accelerator.is_main_process)
        self.summary: TrainSummary | None = None
        self.last_eval: EvalResult | None = None

    # -- the loop ----------------------------------------------------------------------------
    def learn(self) -> TrainSummary:
        """Train to total_steps. A failure before the first checkpoint leaves no folders behind."""
        try:
            return self._learn()
        except Exception:
            self._abandon()
            raise

    def _abandon(self) -> None:
        self.trackers.finish(status="FAILED")
        if self.accelerator.is_main_process and not list_checkpoints(self.checkpoint_dir):
            for directory in self._new_dirs:
                shutil.rmtree(directory, ignore_errors=True)

    def _learn(self) -> TrainSummary:
        train = self.config.train
        self._maybe_resume()
        self.trackers.log_params(self.config.flat())
        batches = self.sampler.iter_from(BatchPosition(self.state.epoch, self.state.batch_in_epoch))
        if self.config.train.packing:
            self._check_packing_isolates_rows()
        if self.state.step == 0:
            self.evaluate()
        progress = tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                        disable=not self.accelerator.is_local_main_process)
        window = _Window()
        t_start = time.perf_counter()
        steps_at_start = self.state.step
        self.model.train()
        while self.state.step < self.total_steps:
            micro_batches = [next(batches) for _ in range(train.gradient_accumulation_steps)]
            # Each micro-batch runs as one or more forward/backward passes (train.tokens_per_pass).
            passes = [self._collate(rows) for _, rows in micro_batches]
            every_pass = [batch for group in passes for batch in group]
            # Normalize by the target tokens of the whole optimizer step, on all ranks, so that
            # accumulation 4 x batch 2 (or 2 ranks x batch 4) is exactly batch 8. Accelerate
            # (and DeepSpeed) divide by the accumulation steps and DDP averages over ranks,
            # hence the scale that undoes both.
            n_targets = self._sum_over_ranks(torch.tensor(sum(b["n_targets"] for b in every_pass), dtype=torch.float64))
            scale = self.accelerator.num_processes * train.gradient_accumulation_steps / n_targets.clamp(min=1)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for group in passes:
                with self.accelerator.accumulate(self.model):
                    for i, batch in enumerate(group):  # ranks sync gradients after the last pass only
                        with self.accelerator.no_sync(self.model) if i < len(group) - 1 else nullcontext():
                            batch_loss = self.compute_loss(batch)
                            self.accelerator.backward(batch_loss * scale.to(batch_loss.device, batch_loss.dtype))
                        loss_sum += batch_loss.detach().double().cpu()
            loss = float(self._sum_over_ranks(loss_sum) / n_targets.clamp(min=1))
            grad_norm = self._clip_gradients()
            if self._step_is_finite(loss, grad_norm):
                self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

            position = micro_batches[-1][0]
            self.state.step += 1
            self.state.epoch, self.state.batch_in_epoch = self._next_position(position)
            self.state.target_tokens_seen += int(n_targets)
            window.add(loss, int(n_targets), sum(b["n_tokens"] for b in every_pass) * self.accelerator.num_processes)
            progress.update(1)
            if self.state.step % train.log_interval == 0 or self.state.step == self.total_steps:
                metrics = window.flush(lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm,
                                       epoch=position.epoch + position.batch_in_epoch / self.sampler.batches_per_epoch)
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                                     tok_s=f"{metrics['train/tokens_per_s']:.0f}")
                self._track(metrics)
            if self.state.step % train.eval_interval == 0 or self.state.step == self.total_steps:
                self.evaluate()
            if self.state.step % train.checkpoint_interval == 0 or self.state.step == self.total_steps:
                self.save()
        progress.close()
        seconds = time.perf_counter() - t_start
        self.summary = self._summarize(seconds, self.state.step - steps_at_start)
        self._write_summary_and_plot()
        self.trackers.finish()
        self._emit("end", asdict(self.summary))
        return self.summary

    def _write_summary_and_plot(self) -> None:
        if not self.accelerator.is_main_process:
            return
        logging_dir = Path(self.config.train.logging_dir)
        (logging_dir / SUMMARY_FILE).write_text(json.dumps(asdict(self.summary), indent=1))
        plot = plot_training_curves(read_history(logging_dir / "metrics.jsonl"), logging_dir / "loss_curve.png")
        if plot is not None:
            self.trackers.log_artifact(plot)

    # -- evaluation, checkpoints, export -----------------------------------------------------
    def evaluate(self) -> EvalResult:
        """Held-out loss and generation metrics; updates best/ when best_metric improves."""
        result = self.evaluator.run(self.model, self.state.step)
        self.last_eval = result
        if result.metrics:
            self.trackers.log_metrics(result.metrics, self.state.step)
            self.trackers.log_samples(result.samples, self.state.step)
            shown = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
            if self.accelerator.is_main_process:
                tqdm.write(f"[eval step {self.state.step}] {shown}")
            self._emit("eval", {"step": self.state.step, "metrics": result.metrics, "samples": result.samples})
            self._update_best(result)
        return result

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Summed token loss of one micro-batch (the loop normalizes it). Override in a subclass for another loss."""
        loss_sum, _ = token_loss_sum(self.model, batch, self.accelerator.device)
        return loss_sum

    def save(self, directory: str | Path | None = None) -> Path:
        """A full checkpoint (weights, optimizer, scheduler, RNG, data position) for resuming."""
        if not self._weights_are_finite():
            raise TrainingError(f"non-finite weights after step {self.state.step} (the update diverged); not saved. "
                                f"{self._last_good_checkpoint()} Lower optimizer.kwargs.lr or set train.max_grad_norm")
        self.state.scheduler = self.scheduler.state_dict()
        path = Path(directory) if directory else self.checkpoint_dir / f"step-{self.state.step}"
        path = save_checkpoint(self.accelerator, path, asdict(self.state), self.config.to_yaml())
        if self.accelerator.is_main_process and directory is None:
            rotate_checkpoints(self.checkpoint_dir, self.config.train.save_total_limit)
        self._emit("checkpoint", {"step": self.state.step, "path": str(path)})
        return path

    def load(self, directory: str | Path) -> None:
        saved = load_checkpoint(self.accelerator, Path(directory))
        self.scheduler.load_state_dict(saved.pop("scheduler"))
        self.state = TrainerState(**saved)

    def save_pretrained(self, directory: str | Path) -> Path:
        """A HuggingFace model folder that AutoModelForCausalLM/AutoTokenizer load unchanged."""
        return export_model(self.accelerator, self.model, self.tokenizer, directory)

    # -- helpers -----------------------------------------------------------------------------
    def _total_steps(self) -> int:
        train = self.config.train
        available = train.epochs * self.sampler.batches_per_epoch // train.gradient_accumulation_steps
        if available == 0:
            raise ConfigError("train.gradient_accumulation_steps",
                              f"{train.gradient_accumulation_steps} micro-batches per step, but the data gives only "
                              f"{self.sampler.batches_per_epoch * train.epochs} batches in {train.epochs} epoch(s)")
        return min(train.total_steps, available)

    def _maybe_resume(self) -> None:
        resume = self.config.train.resume_from_checkpoint
        path = resolve_resume(resume, self.checkpoint_dir) if resume else None
        if path is None:
            if resume == "latest":
                logger.info("resume_from_checkpoint=latest: no checkpoint in %s yet; starting fresh", self.checkpoint_dir)
            return
        self.load(path)
        if self.state.global_batch_size != self.sampler.global_batch_size * self.config.train.gradient_accumulation_steps:
            logger.warning("Resuming with a different global batch size: the data order will not match the original run")
        logger.info("Resumed from %s at step %d", path, self.state.step)

    def _collate(self, rows: list[int]) -> list[dict[str, Any]]:
        """One micro-batch's rows as forward/backward passes (see `micro_batches`)."""
        columns = self.train_data[rows]
        passes = micro_batches(columns["input_ids"], columns["labels"], self.tokenizer.pad_token_id,
                               max_tokens=self.tokens_per_pass,
                               block_len=self.config.train.seq_length if self.config.train.packing else None,
                               padding_side=self.config.tokenizer.padding_side)
        batches = []
        for pass_rows, batch in passes:
            batch["n_targets"] = sum(columns["num_targets"][i] for i in pass_rows)
            batch["n_tokens"] = sum(len(columns["input_ids"][i]) for i in pass_rows)
            batches.append(batch)
        return batches

    @torch.no_grad()
    def _check_packing_isolates_rows(self) -> None:
        """Packing relies on the model reading row boundaries from position_ids; verify it once."""
        rows = list(range(min(8, len(self.train_data))))
        columns = self.train_data[rows]
        padded = collate(columns["input_ids"], columns["labels"], self.tokenizer.pad_token_id)
        packed = pack(columns["input_ids"], columns["labels"], self.config.train.seq_length, self.tokenizer.pad_token_id)
        if packed["input_ids"].shape[0] == len(rows):
            return  # nothing shares a block, so there is nothing to check
        was_training = self.model.training
        self.model.eval()
        a, _ = token_loss_sum(self.model, padded, self.accelerator.device)
        b, _ = token_loss_sum(self.model, packed, self.accelerator.device)
        self.model.train(was_training)
        if not torch.isclose(a.float(), b.float(), rtol=1e-3, atol=1e-3):
            model_type = getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "model_type", "?")
            raise ConfigError("train.packing", f"this model ({model_type}) lets packed rows attend to each other "
                              f"(loss {float(b):.4f} packed vs {float(a):.4f} padded); set train.packing=false")

    def _next_position(self, last: BatchPosition) -> tuple[int, int]:
        if last.batch_in_epoch + 1 < self.sampler.batches_per_epoch:
            return last.epoch, last.batch_in_epoch + 1
        return last.epoch + 1, 0

    def _sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(value.to(self.accelerator.device), reduction="sum").cpu()

    def _clip_gradients(self) -> float | None:
        max_norm = self.config.train.max_grad_norm
        if max_norm is None:
            return None
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        return None if norm is None else float(norm)

    def _step_is_finite(self, loss: float, grad_norm: float | None) -> bool:
        if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
            return True
        step = self.state.step + 1
        weights_finite = self._weights_are_finite()  # skipping a batch only helps while the weights are intact
        if self.config.train.on_nonfinite_loss == "skip" and weights_finite:
            self.state.skipped_steps += 1
            logger.warning("Non-finite loss (%s) at step %d: batch skipped (%d so far)", loss, step,
                           self.state.skipped_steps)
            return False
        broken = "" if weights_finite else " The weights themselves are non-finite, so skipping cannot help."
        raise TrainingError(f"non-finite loss ({loss}) at step {step}.{broken} {self._last_good_checkpoint()} "
                            "Lower optimizer.kwargs.lr, or set train.on_nonfinite_loss=skip to skip such batches")

    def _weights_are_finite(self) -> bool:
        finite = torch.tensor(all(bool(p.detach().isfinite().all()) for p in self.model.parameters()))
        return bool(self._sum_over_ranks(finite.double()) == self.accelerator.num_processes)

    def _last_good_checkpoint(self) -> str:
        last = list_checkpoints(self.checkpoint_dir)
        return f"The last good checkpoint is {last[-1][1]}." if last else "There is no checkpoint yet."

    def _update_best(self, result: EvalResult) -> None:
        train = self.config.train
        name = _resolve_best_metric(train.best_metric, result.metrics)
        if not train.save_best or name is None:
            return
        mode = train.best_mode or ("min" if "loss" in name else "max")
        value = result.metrics[name]
        best = self.state.best_value
        if best is None or (value > best if mode == "max" else value < best):
            self.state.best_metric, self.state.best_value, self.state.best_step = name, value, self.state.step
            self.save_pretrained(self.checkpoint_dir / "best")

    def _track(self, metrics: dict[str, float]) -> None:
        self.trackers.log_metrics(metrics, self.state.step)
        self._emit("log", {"step": self.state.step, "total_steps": self.total_steps, "metrics": metrics,
                           "target_tokens_seen": self.state.target_tokens_seen})

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            for callback in self.callbacks:
                callback(event, payload)

    def _summarize(self, seconds: float, steps_run: int) -> TrainSummary:
        checkpoints = list_checkpoints(self.checkpoint_dir)
        best = self.checkpoint_dir / "best"
        tokens_run = self.state.target_tokens_seen * steps_run / max(self.state.step, 1)
        return TrainSummary(
            steps=self.state.step, target_tokens_seen=self.state.target_tokens_seen, train_seconds=seconds,
            target_tokens_per_s=tokens_run / seconds if seconds > 0 else 0.0,
            final_metrics=dict(self.last_eval.metrics) if self.last_eval else {},
            last_checkpoint=str(checkpoints[-1][1]) if checkpoints else None,
            best_checkpoint=str(best) if best.exists() else None, best_metric=self.state.best_metric,
            best_value=self.state.best_value, skipped_steps=self.state.skipped_steps,
            mlflow_run_id=self.trackers.mlflow_run_id,
        )


class _Window:
    """Accumulates per-step numbers between log lines; logs token-weighted loss and throughput."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_x_targets = 0.0
        self.targets = 0
        self.tokens = 0
        self.t0 = time.perf_counter()

    def add(self, loss: float, n_targets: int, n_tokens: int) -> None:
        self.loss_x_targets += loss * n_targets
        self.targets += n_targets
        self.tokens += n_tokens

    def flush(self, *, lr: float, grad_norm: float | None, epoch: float) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        metrics = {
            "train/loss": self.loss_x_targets / max(self.targets, 1),
            "train/lr": lr,
            "train/tokens_per_s": self.tokens / seconds,
            "train/target_tokens_per_s": self.targets / seconds,
            "train/epoch": epoch,
        }
        if grad_norm is not None:
            metrics["train/grad_norm"] = grad_norm
        self.reset()
        return metrics


def _resolve_best_metric(configured: str | None, metrics: dict[str, float]) -> str | None:
    if configured is None:
        return "eval/loss" if "eval/loss" in metrics else None
    for candidate in (configured, f"metrics/{configured}"):
        if candidate in metrics:
            return candidate
    raise ConfigError("train.best_metric", f"{configured!r} is not among the eval metrics: {sorted(metrics)}")


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating it would add)."""
    path = path.resolve()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _deepspeed_plugin(accelerator: Accelerator) -> Any | None:
    return getattr(accelerator.state, "deepspeed_plugin", None)


def _is_deepspeed(accelerator: Accelerator) -> bool:
    return _deepspeed_plugin(accelerator) is not None


def _is_zero3(accelerator: Accelerator) -> bool:
    plugin = _deepspeed_plugin(accelerator)
    return plugin is not None and plugin.zero_stage == 3


def _fill_deepspeed_batch_config(accelerator: Accelerator, config: SFTConfig) -> None:
    """We batch data ourselves (no prepared DataLoader), so DeepSpeed cannot infer batch sizes."""
    plugin = _deepspeed_plugin(accelerator)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.train.batch_size
    ds["gradient_accumulation_steps"] = config.train.gradient_accumulation_steps
    ds["train_batch_size"] = (config.train.batch_size * config.train.gradient_accumulation_steps
                              * accelerator.num_processes)
    if config.train.max_grad_norm is not None:
        ds["gradient_clipping"] = config.train.max_grad_norm
