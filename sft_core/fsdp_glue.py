"""What sft_core does differently when Accelerate runs it under FSDP2, and why FSDP is GPU-only here.

FSDP is chosen outside the trainer, as DeepSpeed is: an `accelerate launch` config file whose
distributed_type is FSDP (the shipped ``fsdp2``). Accelerate 1.15 turns FSDP on only for GPU-like
devices: ``AcceleratorState`` sets ``distributed_type = FSDP`` inside its branch for MULTI_GPU/NPU/XPU/...
and never for MULTI_CPU, so a CPU run with ACCELERATE_USE_FSDP=true (or an explicit
FullyShardedDataParallelPlugin) silently wraps the model in DDP instead, and a run without
ACCELERATE_USE_CPU on a GPU-less machine trains unsharded copies in every process. PyTorch's own
``fully_shard`` does run over gloo on CPUs; it is Accelerate's routing that does not. Rather than
train something other than what the config says, sft_core refuses FSDP without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_core.config import DistributedConfig
from sft_core.config_io import load_yaml_text
from sft_core.errors import ConfigError

if TYPE_CHECKING:  # torch and accelerate load lazily: sft_core.launch imports this module in the parent process
    import torch
    from accelerate import Accelerator

LAUNCH_CONFIGS = Path(__file__).with_name("launch_configs")
FIELD = "distributed.accelerate_config"
CPU_REASON = ("FSDP runs only on GPUs here: Accelerate 1.15 enables FSDP for GPU-like devices alone, and on CPUs "
              "it would silently train with plain DDP (every rank holding the whole model) instead")


@dataclass(frozen=True)
class FSDPMode:
    enabled: bool  # the Accelerator runs under an FSDP plugin
    version: int | None = None  # 1 or 2

    def synced_generation(self, num_processes: int) -> bool:
        """Weights are sharded across ranks: every rank must keep calling forward until all finish generating."""
        return self.enabled and num_processes > 1


def launch_config_path(name_or_path: str) -> Path:
    """A shipped config's file (``fsdp2`` -> sft_core/launch_configs/fsdp2.yaml), or the given path."""
    shipped = LAUNCH_CONFIGS / f"{name_or_path}.yaml"
    return shipped if shipped.exists() else Path(name_or_path)


def asks_for_fsdp(dist: DistributedConfig) -> bool:
    """Whether distributed.accelerate_config names an Accelerate config whose distributed_type is FSDP."""
    path = launch_config_path(dist.accelerate_config)
    if not path.is_file():
        return False  # a missing file is accelerate launch's error to report, with its own message
    try:
        raw = load_yaml_text(path.read_text(encoding="utf-8")) or {}
    except Exception:  # noqa: BLE001 - an unreadable YAML is accelerate launch's error to report
        return False
    return isinstance(raw, dict) and str(raw.get("distributed_type", "")).upper() == "FSDP"


def require_gpu_for_fsdp(dist: DistributedConfig, *, gpu_available: bool) -> None:
    """Refuse an FSDP launch config where the run would train on CPUs."""
    if not asks_for_fsdp(dist):
        return
    if dist.use_cpu:
        raise ConfigError(FIELD, f"{dist.accelerate_config!r} is an FSDP config, but distributed.use_cpu is true. "
                                 f"{CPU_REASON}. Use accelerate_config ddp on CPUs")
    if not gpu_available:
        raise ConfigError(FIELD, f"{dist.accelerate_config!r} is an FSDP config, but this machine has no CUDA GPU. "
                                 f"{CPU_REASON}. Run it on a GPU machine, or use accelerate_config ddp here")


def setup_fsdp(accelerator: Accelerator, dist: DistributedConfig) -> FSDPMode:
    """Say whether this run is sharded by FSDP; refuse a config that asks for FSDP in a run that is not."""
    import torch
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type == DistributedType.FSDP and plugin is not None:
        return FSDPMode(enabled=True, version=plugin.fsdp_version)
    if asks_for_fsdp(dist):
        require_gpu_for_fsdp(dist, gpu_available=torch.cuda.is_available() and accelerator.device.type != "cpu")
        raise ConfigError(FIELD, f"{dist.accelerate_config!r} is an FSDP config, but this process was not started "
                                 f"under FSDP (distributed type {accelerator.distributed_type.value}): a worker started by hand? "
                                 "Start it with `python -m sft_core train CONFIG`, `python -m sft_core run` or the "
                                 "flow, which launch it through `accelerate launch --config_file "
                                 f"{launch_config_path(dist.accelerate_config)}`")
    return FSDPMode(enabled=False)


def local_shard(tensor: Any) -> torch.Tensor:
    """This rank's part of a parameter: the local shard of an FSDP2 DTensor, else the tensor itself.

    Reducing a DTensor to a Python bool would need a collective per parameter; checking each rank's
    shard and summing the answers over ranks needs one.
    """
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor
