"""Write a HuggingFace model folder: safetensors weights, config, generation_config, tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from sft_core.checkpoint import atomic_dir_write

logger = logging.getLogger(__name__)


def export_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, directory: str | Path) -> Path:
    """Collective: every rank must call it. Under ZeRO-3 the shards are gathered first."""
    # get_state_dict gathers ZeRO-3 partitions; a partitioned parameter would otherwise save as an empty tensor.
    state_dict = accelerator.get_state_dict(model)

    def write(tmp: Path) -> None:
        if not accelerator.is_main_process:
            return
        empty = [name for name, t in state_dict.items() if t.numel() == 0]
        if empty:
            raise RuntimeError(f"refusing to export empty (un-gathered) weights: {empty[:3]}")
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)

    final = atomic_dir_write(accelerator, Path(directory), write)
    if accelerator.is_main_process:
        logger.info("Exported model to %s", final)
    return final
