"""Optimizer and LR schedule from their config sections.

The schedules are the libraries' own, not formulas of ours: Transformers' for warmup-then-decay
(the same functions TRL and the HF Trainer use, so a config means the same LR curve there), and
torch's CosineAnnealingLR and LinearLR for trlX's ``cosine_annealing`` and ``linear``, built as trlX
builds them. Each is a torch LRScheduler, so the trainer saves and restores its ``state_dict()`` and a
resumed run continues the curve exactly.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler
from transformers import get_scheduler

from sft_core.config import OptimizerConfig, SchedulerConfig
from sft_core.errors import ConfigError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}

# Our schedule names -> Transformers' scheduler types. All warm up linearly from 0: the LR of
# optimizer step k (0-based) is lr * k / warmup_steps, so step 0 runs at LR 0 (it still seeds Adam's moments).
HF_SCHEDULES = {"constant_with_warmup": "constant_with_warmup", "linear_with_warmup": "linear",
                "cosine_with_warmup": "cosine_with_min_lr"}
# trlX passes scheduler.kwargs straight to the torch class; these are the kwargs each takes besides the optimizer.
TRLX_SCHEDULER_KWARGS = {"cosine_annealing": {"T_max", "eta_min"},
                         "linear": {"start_factor", "end_factor", "total_iters"}}


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
    if cfg.name in TRLX_SCHEDULER_KWARGS:
        unknown = set(cfg.kwargs) - TRLX_SCHEDULER_KWARGS[cfg.name]
        if unknown:
            raise ConfigError("scheduler.kwargs", f"{cfg.name} takes {sorted(TRLX_SCHEDULER_KWARGS[cfg.name])}; "
                                                  f"got {sorted(unknown)}")
        if cfg.name == "cosine_annealing":
            return _cosine_annealing(optimizer, cfg, total_steps)
        try:
            return LinearLR(optimizer, **cfg.kwargs)  # torch's defaults: start_factor 1/3, end_factor 1, total_iters 5
        except ValueError as err:
            raise ConfigError("scheduler.kwargs", f"linear: {err}") from None
    if cfg.kwargs:
        raise ConfigError("scheduler.kwargs", f"only {' and '.join(TRLX_SCHEDULER_KWARGS)} take kwargs; {cfg.name} "
                                              f"takes warmup_steps"
                                              f"{' and min_lr_ratio' if cfg.name == 'cosine_with_warmup' else ''}")
    extra = {"min_lr_rate": cfg.min_lr_ratio} if cfg.name == "cosine_with_warmup" else None
    return get_scheduler(HF_SCHEDULES[cfg.name], optimizer, num_warmup_steps=cfg.warmup,
                         num_training_steps=total_steps, scheduler_specific_kwargs=extra)


def _cosine_annealing(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> CosineAnnealingLR:
    """trlX's schedule as trlX builds it: CosineAnnealingLR(optimizer, **kwargs), no warmup.
    T_max defaults to the run's length, so the LR reaches eta_min at the last step instead of
    cycling back up (torch itself has no default)."""
    t_max = cfg.kwargs.get("T_max", total_steps)
    if not isinstance(t_max, (int, float)) or isinstance(t_max, bool) or not t_max > 0:
        raise ConfigError("scheduler.kwargs.T_max", f"must be a positive number of steps, got {t_max!r}")
    return CosineAnnealingLR(optimizer, T_max=t_max, eta_min=float(cfg.kwargs.get("eta_min", 0.0)))
