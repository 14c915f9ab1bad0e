"""Write a HuggingFace model folder: safetensors weights, config, generation_config, tokenizer.

A run with a PEFT adapter writes the adapter alone (adapter_config.json, adapter_model.safetensors,
for ``peft.AutoPeftModelForCausalLM``), or, with model.merge_adapters_on_export, the full model with
the adapter merged into its weights (for ``AutoModelForCausalLM``). Weights keep their dtype.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from sft_core.adapters import is_adapter_model
from sft_core.checkpoint import atomic_dir_write

logger = logging.getLogger(__name__)

# Set on an adapter model at load time (sft_core.modeling) from model.merge_adapters_on_export, so a
# caller that passes only the model (trainer.save_pretrained) exports what the config asked for.
MERGE_ON_EXPORT_ATTR = "sft_merge_adapters_on_export"


def export_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, directory: str | Path, *,
                 merge_adapters: bool | None = None) -> Path:
    """Collective: every rank must call it. Under ZeRO-3 the shards are gathered first.

    ``merge_adapters``: for an adapter model, write the merged full model; None: what the model was
    loaded with (model.merge_adapters_on_export). Ignored for a model without an adapter.
    """
    # get_state_dict gathers ZeRO-3 partitions; a partitioned parameter would otherwise save as an empty tensor.
    # For an adapter model it holds the adapter's tensors only (see sft_core.adapters).
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    adapter = is_adapter_model(unwrapped)
    merge = adapter and (getattr(unwrapped, MERGE_ON_EXPORT_ATTR, False) if merge_adapters is None else merge_adapters)

    def write(tmp: Path) -> None:
        if not accelerator.is_main_process:
            return
        empty = [name for name, t in state_dict.items() if t.numel() == 0]
        if empty:
            raise RuntimeError(f"refusing to export empty (un-gathered) weights: {empty[:3]}")
        if merge:
            merged_copy(unwrapped).save_pretrained(tmp)
        else:  # a plain model, or PeftModel.save_pretrained: the adapter and its config
            unwrapped.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)

    final = atomic_dir_write(accelerator, Path(directory), write)
    if accelerator.is_main_process:
        what = "merged model" if merge else "adapter" if adapter else "model"
        logger.info("Exported %s to %s", what, final)
    return final


def merged_copy(adapter_model: Any) -> torch.nn.Module:
    """The base model with the adapter merged into its weights; the training model is left as it was
    (merging in place and unmerging again would round the base weights twice)."""
    return copy.deepcopy(adapter_model).merge_and_unload()
