"""The causal-LM loss as a sum over target tokens, so callers choose the normalization."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sft_core.data.masking import IGNORE_INDEX


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: Any) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and how many targets there were.

    A sum, not a mean: the trainer divides by the target count of the whole optimizer step
    (all micro-batches, all ranks), so every target token weighs the same however rows are batched.
    """
    labels = batch["labels"]
    mask = batch.get("attention_mask")  # None for packed batches: position_ids separate the rows
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=None if mask is None else mask.to(device),
        position_ids=batch["position_ids"].to(device),
        # Training needs no KV cache, and with one transformers ignores packed position_ids: it builds the
        # block-diagonal mask only when past_key_values is None (masking_utils.create_causal_mask, 5.x:
        # https://github.com/huggingface/transformers/blob/main/src/transformers/masking_utils.py).
        use_cache=False,
    ).logits
    targets = labels[:, 1:].to(device)  # token t predicts t+1
    loss_sum = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss_sum, int((labels[:, 1:] != IGNORE_INDEX).sum())
