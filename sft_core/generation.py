"""Batched, left-padded generation with the KV cache, stop-sequence trimming and gen_kwargs sweeps."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from sft_core.data.batching import collate


def sweep(gen_kwargs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """trlX's sweep: a list-valued key runs once per value; metric names get an '@key=value' suffix."""
    swept = [k for k, v in gen_kwargs.items() if isinstance(v, list)]
    if not swept:
        yield "", dict(gen_kwargs)
        return
    key = swept[0]
    for value in gen_kwargs[key]:
        yield f"@{key}={value}", {**gen_kwargs, key: value}


def trim_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    cut = min((i for s in stop_sequences if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    gen_kwargs: dict[str, Any],
    *,
    batch_size: int,
    stop_sequences: Sequence[str] = (),
    synced_gpus: bool = False,
) -> list[str]:
    """Decode continuations of ``prompt_ids``, in input order.

    Prompts are sorted by length before batching so each batch pads little; each batch is left
    padded so every continuation starts at the same column and uses the KV cache.
    """
    n_return = int(gen_kwargs.get("num_return_sequences", 1))
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    outputs: list[list[str]] = [[] for _ in prompt_ids]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([prompt_ids[i] for i in chunk], None, tokenizer.pad_token_id, padding_side="left")
            device = next(model.parameters()).device
            generated = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=gen_kwargs.get("eos_token_id", tokenizer.eos_token_id),
                synced_gpus=synced_gpus,
                **{k: v for k, v in gen_kwargs.items() if k != "eos_token_id"},
            )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for j, text in enumerate(texts):
                outputs[chunk[j // n_return]].append(trim_at_stop(text, stop_sequences))
    finally:
        model.train(was_training)
    return [text for per_prompt in outputs for text in per_prompt]
