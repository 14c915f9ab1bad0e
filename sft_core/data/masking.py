"""Masking in one place: segments of token ids -> (input_ids, labels).

Labels follow the HuggingFace convention: unshifted copies of input_ids, -100 where no loss is
taken. The trainer and collator never touch masks; they trust what this module returns.
"""

from __future__ import annotations

from typing import Literal, Sequence

IGNORE_INDEX = -100


def build_example(
    segment_ids: Sequence[Sequence[int]],
    trainable: Sequence[bool],
    *,
    bos_id: int | None,
    eos_id: int | None,
) -> tuple[list[int], list[int]]:
    """Concatenate tokenized segments; trainable ones become targets.

    ``bos_id`` is prepended (never a target) when given; ``eos_id`` is appended as a target
    when given, so the model learns to stop.
    """
    input_ids: list[int] = [] if bos_id is None else [bos_id]
    labels: list[int] = [] if bos_id is None else [IGNORE_INDEX]
    for ids, train_on in zip(segment_ids, trainable, strict=True):
        input_ids.extend(ids)
        labels.extend(ids if train_on else [IGNORE_INDEX] * len(ids))
    if eos_id is not None:
        input_ids.append(eos_id)
        labels.append(eos_id)
    assert len(input_ids) == len(labels)
    return input_ids, labels


def truncate(
    input_ids: list[int], labels: list[int], max_len: int, side: Literal["left", "right"]
) -> tuple[list[int], list[int], bool]:
    """Cut a row to ``max_len`` tokens from ``side``; returns (ids, labels, was_truncated)."""
    if len(input_ids) <= max_len:
        return input_ids, labels, False
    if side == "right":
        return input_ids[:max_len], labels[:max_len], True
    return input_ids[-max_len:], labels[-max_len:], True


def count_targets(labels: Sequence[int]) -> int:
    """Tokens that contribute to the loss: position 0 predicts nothing after the shift."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


def show_mask(input_ids: Sequence[int], labels: Sequence[int], tokenizer) -> str:
    """Render a row with trained-on text in [[double brackets]], to check masking by eye."""
    out: list[str] = []
    run: list[int] = []
    run_trained = False
    for tok, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if run and trained != run_trained:
            out.append(_render(tokenizer, run, run_trained))
            run = []
        run.append(tok)
        run_trained = trained
    if run:
        out.append(_render(tokenizer, run, run_trained))
    return "".join(out)


def _render(tokenizer, ids: list[int], trained: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return f"[[{text}]]" if trained else text
