"""sft_core: supervised fine-tuning of causal LMs with a trlX-compatible API. No Prefect in here."""

from sft_core.api import train
from sft_core.config import SFTConfig, default_sft_config
from sft_core.errors import ConfigError, DataError, MetricError, ModelLoadError, SFTError, TrainingError
from sft_core.trainer import AccelerateSFTTrainer, TrainSummary

TRLConfig = SFTConfig  # trlX's name, so `from sft_core import TRLConfig` works in ported scripts

__all__ = [
    "AccelerateSFTTrainer", "ConfigError", "DataError", "MetricError", "ModelLoadError", "SFTConfig", "SFTError",
    "TRLConfig", "TrainSummary", "TrainingError", "default_sft_config", "train",
]
