"""Optimizer and LR schedule from their config sections.

The schedules are the libraries' own, not formulas of ours: Transformers' for warmup-then-decay
(the same functions TRL and the HF Trainer use, so a config means the same LR curve there), and
torch's CosineAnnealingLR for trlX's ``cosine_annealing``. Each is a torch LRScheduler, so the
trainer saves and restores its ``state_dict()`` and a resumed run continues the curve exactly.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from transformers import get_scheduler

from sft_core.config import OptimizerConfig, SchedulerConfig
from sft_core.errors import ConfigError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}

# Our schedule names -> Transformers' scheduler types. All warm up linearly from 0: the LR of
# optimizer step k (0-based) is lr * k / warmup_steps, so step 0 runs at LR 0 (it still seeds Adam's moments).
HF_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine_with_min_lr"}
COSINE_ANNEALING_KWARGS = {"T_max", "eta_min"}  # trlX passes scheduler.kwargs straight to CosineAnnealingLR


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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> LRScheduler:
    """The LR schedule over ``total_steps`` optimizer steps; the trainer steps it once per optimizer step."""
    if cfg.name == "cosine_annealing":
        return _cosine_annealing(optimizer, cfg, total_steps)
    if cfg.kwargs:
        raise ConfigError("scheduler.kwargs", f"only cosine_annealing takes kwargs; {cfg.name} takes "
                                              f"warmup_steps{' and min_lr_ratio' if cfg.name == 'cosine' else ''}")
    extra = {"min_lr_rate": cfg.min_lr_ratio} if cfg.name == "cosine" else None
    return get_scheduler(HF_SCHEDULES[cfg.name], optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=total_steps, scheduler_specific_kwargs=extra)


def _cosine_annealing(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> CosineAnnealingLR:
    """trlX's schedule as trlX builds it: CosineAnnealingLR(optimizer, **kwargs), no warmup.
    T_max defaults to the run's length, so the LR reaches eta_min at the last step instead of
    cycling back up (torch itself has no default)."""
    unknown = set(cfg.kwargs) - COSINE_ANNEALING_KWARGS
    if unknown:
        raise ConfigError("scheduler.kwargs", f"cosine_annealing takes {sorted(COSINE_ANNEALING_KWARGS)}; "
                                              f"got {sorted(unknown)}")
    t_max = cfg.kwargs.get("T_max", total_steps)
    if not isinstance(t_max, (int, float)) or isinstance(t_max, bool) or not t_max > 0:
        raise ConfigError("scheduler.kwargs.T_max", f"must be a positive number of steps, got {t_max!r}")
    return CosineAnnealingLR(optimizer, T_max=t_max, eta_min=float(cfg.kwargs.get("eta_min", 0.0)))
