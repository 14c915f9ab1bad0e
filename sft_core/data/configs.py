"""trlX's ``trlx.data.configs`` under sft_core: the config classes, so ``from trlx.data.configs import ...``
works with ``trlx`` renamed to ``sft_core``. They are sft_core.config's own classes."""

from sft_core.config import (MethodConfig, ModelConfig, OptimizerConfig, SchedulerConfig, TokenizerConfig,
                             TrainConfig, TRLConfig)

__all__ = ["MethodConfig", "ModelConfig", "OptimizerConfig", "SchedulerConfig", "TRLConfig", "TokenizerConfig",
           "TrainConfig"]
