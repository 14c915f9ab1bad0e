"""Optimizer and LR schedule from their config sections."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from sft_core.config import OptimizerConfig, SchedulerConfig
from sft_core.errors import ConfigError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, *, fused: bool = True
                    ) -> torch.optim.Optimizer:
    """``fused``: Adam(W)'s one-kernel step unless the kwargs choose an implementation. It is faster
    than the default multi-tensor step and allocates no parameter-sized temporaries (peak memory)."""
    kwargs = dict(cfg.kwargs)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])  # YAML gives a list
    if fused and cfg.name in ("adam", "adamw") and not {"fused", "foreach"} & set(kwargs):
        kwargs["fused"] = True
    try:
        return OPTIMIZERS[cfg.name]([p for p in params if p.requires_grad], **kwargs)
    except TypeError as err:
        raise ConfigError("optimizer.kwargs", f"{cfg.name}: {err}") from None


def lr_factor(step: int, cfg: SchedulerConfig, total_steps: int, base_lr: float) -> float:
    """Multiplier on the base LR at optimizer step ``step`` (0-based): linear warmup, then decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cosine_annealing":  # torch's CosineAnnealingLR, with trlX's kwargs
        t_max = float(cfg.kwargs.get("T_max", total_steps))
        eta_min = float(cfg.kwargs.get("eta_min", 0.0))
        return (eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * step / t_max)) / 2) / base_lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    decay = 1 - progress if cfg.name == "linear" else (1 + math.cos(math.pi * progress)) / 2
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> LambdaLR:
    if cfg.name == "cosine_annealing" and float(cfg.kwargs.get("T_max", 1)) <= 0:
        raise ConfigError("scheduler.kwargs.T_max", "must be positive")
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps, base_lr))
