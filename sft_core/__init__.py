"""sft_core: supervised fine-tuning of causal LMs with a trlX-compatible API. No Prefect in here.

Names as in trlX: ``TRLConfig`` is the whole config, ``SFTConfig`` its ``method`` section.
"""

from sft_core.api import train
from sft_core.config import SFTConfig, TRLConfig, default_sft_config
from sft_core.errors import ConfigError, DataError, MetricError, ModelLoadError, SFTError, TrainingError
from sft_core.trainer import AccelerateSFTTrainer, TrainSummary

__all__ = [
    "AccelerateSFTTrainer", "ConfigError", "DataError", "MetricError", "ModelLoadError", "SFTConfig", "SFTError",
    "TRLConfig", "TrainSummary", "TrainingError", "default_sft_config", "train",
]
