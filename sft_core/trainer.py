"""AccelerateSFTTrainer: trlX's SFT trainer, rebuilt as setup functions plus one visible loop.

The loop, top to bottom: take `gradient_accumulation_steps` micro-batches (each run as one or more
forward/backward passes of at most `tokens_per_pass` tokens), count their target tokens on every
rank, backprop each pass's summed loss divided by that global count, clip, step, schedule, log,
evaluate, checkpoint. Data order is a pure function of
(seed, epoch, batch index), so a resumed run replays exactly the batches the original would have.
"""

from __future__ import annotations

import logging
import math
import shutil
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator
from datasets import Dataset
from pydantic import BaseModel, ConfigDict

from sft_core.checkpoint import (TrainerState, checkpoint_path, list_checkpoints, load_checkpoint, resolve_resume,
                                 rotate_checkpoints, save_checkpoint, topmost_missing)
from sft_core.config import TRLConfig
from sft_core.data.batching import BatchPosition, EpochBatchSampler, micro_batches
from sft_core.data.prepare import row_lengths
from sft_core.deepspeed_glue import setup_deepspeed
from sft_core.errors import ConfigError, TrainingError
from sft_core.evaluation import EvalPrompts, EvalResult, Evaluator, check_packing_isolates_rows, resolve_best_metric
from sft_core.export import export_model
from sft_core.fsdp_glue import local_shard, setup_fsdp
from sft_core.layout import BEST_DIR, LOSS_CURVE_FILE, METRICS_FILE, SUMMARY_FILE
from sft_core.losses import token_loss_sum
from sft_core.metrics import MetricFn
from sft_core.modeling import resolve_tokens_per_pass
from sft_core.nodes import check_shared_folder
from sft_core.optim import build_optimizer, build_scheduler
from sft_core.plots import plot_training_curves
from sft_core.progress import StepLog, show
from sft_core.tracking import build_trackers, read_history

logger = logging.getLogger(__name__)

# SUMMARY_FILE is re-exported for callers that imported it from here (it lives in sft_core.layout).
__all__ = ["SUMMARY_FILE", "AccelerateSFTTrainer", "Callback", "TrainSummary", "TrainerState"]

Callback = Callable[[str, dict[str, Any]], None]  # (event, payload): "log", "eval", "checkpoint", "end"


class TrainSummary(BaseModel):
    """What a finished run reports; ``learn()`` writes it to train.logging_dir as SUMMARY_FILE."""

    model_config = ConfigDict(ser_json_inf_nan="constants")  # a NaN metric is written as NaN (as json.dumps did)

    steps: int  # optimizer steps done in total (a resumed run counts the original's too)
    target_tokens_seen: int
    train_seconds: float  # this process's training time (not the original's, after a resume)
    target_tokens_per_s: float
    final_metrics: dict[str, float]  # the last evaluation
    last_checkpoint: str | None
    best_checkpoint: str | None
    best_metric: str | None
    best_value: float | None
    skipped_steps: int  # non-finite losses skipped
    mlflow_run_id: str | None
    model_dir: str | None = None  # the exported model folder, filled in by whoever exports

    def write(self, logging_dir: str | Path) -> Path:
        path = Path(logging_dir) / SUMMARY_FILE
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def read(cls, logging_dir: str | Path) -> TrainSummary:
        return cls.model_validate_json((Path(logging_dir) / SUMMARY_FILE).read_text())


class AccelerateSFTTrainer:
    def __init__(
        self,
        config: TRLConfig,
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
        lengths = row_lengths(train_data) if train.group_by_length else None  # offsets only, no token reads
        self.sampler = EpochBatchSampler(len(train_data), train.batch_size, seed=train.seed, lengths=lengths,
                                         rank=accelerator.process_index, world_size=accelerator.num_processes)
        self.total_steps = self._total_steps()
        deepspeed = setup_deepspeed(accelerator, train)
        if deepspeed.enabled and train.minibatch_size not in (None, train.batch_size):
            raise ConfigError("train.minibatch_size", "DeepSpeed runs one pass per micro-batch; lower "
                              "train.batch_size and raise gradient_accumulation_steps instead")
        fsdp = setup_fsdp(accelerator, config.distributed)  # refuses an FSDP config in a run that is not sharded
        self.tokens_per_pass = resolve_tokens_per_pass(train.tokens_per_pass, model,
                                                       on_cpu=accelerator.device.type == "cpu",
                                                       deepspeed=deepspeed.enabled)
        # DeepSpeed steps the optimizer on its own flat partitions: leave it the plain implementation.
        optimizer = build_optimizer(model.parameters(), config.optimizer, fused=not deepspeed.enabled)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        # Not passed to prepare(): Accelerate would step it once per process per step
        # (https://github.com/huggingface/accelerate/issues/2142; the HF Trainer stopped preparing
        # its scheduler for the same reason: https://github.com/huggingface/transformers/pull/24088).
        self.scheduler = build_scheduler(self.optimizer, config.scheduler, self.total_steps)
        self.evaluator = Evaluator(
            accelerator, tokenizer, config.method, eval_data=eval_data, prompts=eval_prompts, metric_fns=metric_fns,
            batch_size=config.method.eval_batch_size, pad_id=tokenizer.pad_token_id,
            log_samples=config.tracking.log_samples,
            synced_gpus=deepspeed.zero3 or fsdp.synced_generation(accelerator.num_processes),
        )
        self.state = TrainerState(global_batch_size=self.sampler.global_batch_size * train.gradient_accumulation_steps)
        self.checkpoint_dir = Path(train.checkpoint_dir)
        # Folders this run creates; removed again if it fails before its first checkpoint (nothing to resume).
        self._new_dirs = {topmost_missing(Path(d)) for d in (train.checkpoint_dir, train.logging_dir)} - {None}
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
        check_shared_folder(self.accelerator, self.checkpoint_dir, self.config.distributed)  # several machines only
        self._maybe_resume()
        self.trackers.log_params(self.config.flat())
        batches = self.sampler.iter_from(BatchPosition(self.state.epoch, self.state.batch_in_epoch))
        if train.packing:
            check_packing_isolates_rows(self.accelerator, self.model, self.train_data, seq_length=train.seq_length,
                                        pad_id=self.tokenizer.pad_token_id)
        if self.state.step == 0:
            self.evaluate()
        log = StepLog(total_steps=self.total_steps, initial_step=self.state.step, log_interval=train.log_interval,
                      show_bar=self.accelerator.is_local_main_process)
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
            n_tokens = sum(b["n_tokens"] for b in every_pass) * self.accelerator.num_processes
            epoch = position.epoch + position.batch_in_epoch / self.sampler.batches_per_epoch
            metrics = log.step(self.state.step, loss, int(n_targets), n_tokens, lr=self.scheduler.get_last_lr()[0],
                               grad_norm=grad_norm, epoch=epoch)
            if metrics is not None:
                self._track(metrics)
            if self.state.step % train.eval_interval == 0 or self.state.step == self.total_steps:
                self.evaluate()
            if self.state.step % train.checkpoint_interval == 0 or self.state.step == self.total_steps:
                self.save()
        return self._finish(seconds=log.close(), steps_run=self.state.step - steps_at_start)

    def _finish(self, seconds: float, steps_run: int) -> TrainSummary:
        self.summary = self._summarize(seconds, steps_run)
        if self.accelerator.is_main_process:
            logging_dir = Path(self.config.train.logging_dir)
            self.summary.write(logging_dir)
            plot = plot_training_curves(read_history(logging_dir / METRICS_FILE), logging_dir / LOSS_CURVE_FILE)
            if plot is not None:
                self.trackers.log_artifact(plot)
        self.trackers.finish()
        self._emit("end", self.summary.model_dump())
        return self.summary

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
                show(f"[eval step {self.state.step}] {shown}")
            self._emit("eval", {"step": self.state.step, "metrics": result.metrics, "samples": result.samples})
            self._update_best(result)
        return result

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Summed token loss of one micro-batch (the loop normalizes it). Override in a subclass for another loss."""
        loss_sum, _ = token_loss_sum(self.model, batch, self.accelerator.device)
        return loss_sum

    def save(self, directory: str | Path | None = None) -> Path:
        """A full checkpoint (weights, optimizer, scheduler, RNG, data position) for resuming; without
        the optimizer's state when train.save_optimizer is false (trlX's switch: a third of the size with Adam)."""
        if not self._weights_are_finite():
            raise TrainingError(f"non-finite weights after step {self.state.step} (the update diverged); not saved. "
                                f"{self._last_good_checkpoint()} Lower optimizer.kwargs.lr or set train.max_grad_norm")
        self.state.scheduler = self.scheduler.state_dict()
        path = Path(directory) if directory else checkpoint_path(self.checkpoint_dir, self.state.step)
        path = save_checkpoint(self.accelerator, path, asdict(self.state), self.config.to_yaml(),
                               save_optimizer=self.config.train.save_optimizer)
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
                               padding_side=self.config.tokenizer.padding_side,
                               max_rows=self.config.train.minibatch_size)
        batches = []
        for pass_rows, batch in passes:
            batch["n_targets"] = sum(columns["num_targets"][i] for i in pass_rows)
            batch["n_tokens"] = sum(len(columns["input_ids"][i]) for i in pass_rows)
            batches.append(batch)
        return batches

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
        # Each rank checks what it holds (its FSDP2 shard, or the whole tensor); the sum over ranks decides.
        finite = torch.tensor(all(bool(local_shard(p).detach().isfinite().all()) for p in self.model.parameters()))
        return bool(self._sum_over_ranks(finite.double()) == self.accelerator.num_processes)

    def _last_good_checkpoint(self) -> str:
        last = list_checkpoints(self.checkpoint_dir)
        return f"The last good checkpoint is {last[-1][1]}." if last else "There is no checkpoint yet."

    def _update_best(self, result: EvalResult) -> None:
        train = self.config.train
        name = resolve_best_metric(train.best_metric, result.metrics)
        if not train.save_best or name is None:
            return
        mode = train.best_mode or ("min" if "loss" in name else "max")
        value = result.metrics[name]
        best = self.state.best_value
        if best is None or (value > best if mode == "max" else value < best):
            self.state.best_metric, self.state.best_value, self.state.best_step = name, value, self.state.step
            self.save_pretrained(self.checkpoint_dir / BEST_DIR)

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
        best = self.checkpoint_dir / BEST_DIR
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
