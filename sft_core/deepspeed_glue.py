"""What the trainer must do differently when Accelerate runs it under DeepSpeed.

DeepSpeed is chosen outside the config (an `accelerate launch` config file with a DeepSpeed
section), so it is read from the Accelerator's state, once, when the trainer is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator

from sft_core.config import TrainConfig


@dataclass(frozen=True)
class DeepSpeedMode:
    enabled: bool  # the Accelerator runs under a DeepSpeed plugin
    zero_stage: int | None = None  # 0-3; 3 partitions the weights themselves

    @property
    def zero3(self) -> bool:
        """Weights are partitioned across ranks: generation must run on every rank (synced_gpus)."""
        return self.zero_stage == 3


def setup_deepspeed(accelerator: Accelerator, train: TrainConfig) -> DeepSpeedMode:
    """Fill in the batch sizes DeepSpeed needs (when it is on) and say which mode the run is in.

    Call before ``accelerator.prepare``. Accelerate infers `train_micro_batch_size_per_gpu` from a
    DataLoader passed to prepare(); we batch rows ourselves and pass none, so without these values
    prepare() fails ("requires you to pass at least one of training or evaluation dataloaders ...
    or assign integer value to AcceleratorState().deepspeed_plugin.deepspeed_config[...]").
    Upstream: https://github.com/huggingface/accelerate/issues/2647 (own batching under DeepSpeed)
    and https://github.com/huggingface/accelerate/pull/676 (the config-value escape hatch).
    """
    plugin = _deepspeed_plugin(accelerator)
    if plugin is None:
        return DeepSpeedMode(enabled=False)
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = train.batch_size
    ds["gradient_accumulation_steps"] = train.gradient_accumulation_steps
    ds["train_batch_size"] = train.batch_size * train.gradient_accumulation_steps * accelerator.num_processes
    if train.max_grad_norm is not None:
        ds["gradient_clipping"] = train.max_grad_norm
    return DeepSpeedMode(enabled=True, zero_stage=plugin.zero_stage)


def _deepspeed_plugin(accelerator: Accelerator) -> Any | None:
    return getattr(accelerator.state, "deepspeed_plugin", None)
