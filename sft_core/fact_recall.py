"""Recall of taught facts: an answer counts when it contains the fact's key phrase.

Used as ``method.metrics: ["sft_core.fact_recall:key_phrase_recall"]`` with eval rows that carry a
``key_phrase`` column (configs/examples/invented_facts_*.jsonl). Case-insensitive, so "osmuir." and
"Osmuir" both count; exact wording is not asked for, only that the fact comes back.
"""

from __future__ import annotations

from typing import Any, Sequence


def key_phrase_recall(samples: Sequence[str], prompts: Sequence[str], outputs: Sequence[str], *,
                      key_phrase: Sequence[str] | None = None, **metadata: Any) -> dict[str, Any]:
    if key_phrase is None:
        return {}  # eval rows without a key_phrase column: nothing to score
    return {"recall": [float(key.lower() in out.lower()) for out, key in zip(outputs, key_phrase, strict=True)]}
