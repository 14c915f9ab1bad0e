"""sft_core: supervised fine-tuning of causal LMs with a trlX-compatible API. No Prefect in here.

Names as in trlX: ``TRLConfig`` is the whole config, ``SFTConfig`` its ``method`` section.
The names below load on first use, so ``python -m sft_core`` commands that only read a config (the
launcher that starts a node's torchrun, ``config``) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "train": "sft_core.api",
    "SFTConfig": "sft_core.config", "TRLConfig": "sft_core.config", "default_sft_config": "sft_core.config",
    "ConfigError": "sft_core.errors", "DataError": "sft_core.errors", "MetricError": "sft_core.errors",
    "ModelLoadError": "sft_core.errors", "SFTError": "sft_core.errors", "TrainingError": "sft_core.errors",
    "AccelerateSFTTrainer": "sft_core.trainer", "TrainSummary": "sft_core.trainer",
}

__all__ = sorted(_WHERE)

if TYPE_CHECKING:
    from sft_core.api import train
    from sft_core.config import SFTConfig, TRLConfig, default_sft_config
    from sft_core.errors import ConfigError, DataError, MetricError, ModelLoadError, SFTError, TrainingError
    from sft_core.trainer import AccelerateSFTTrainer, TrainSummary


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sft_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
