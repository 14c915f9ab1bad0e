"""Tokenize samples into (input_ids, labels) rows with ``datasets.map``, cached by content fingerprint.

A second run over the same rows, tokenizer and length settings reads the Arrow cache instead of
tokenizing again. Rows are checked while they are prepared: a row left with no target tokens
after truncation is dropped and counted by reason, and a set where every row was dropped fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import datasets
from datasets import Dataset

from sft_core.data.formats import Segments, to_segments
from sft_core.data.masking import IGNORE_INDEX, build_example, count_targets, truncate
from sft_core.errors import DataError

logger = logging.getLogger(__name__)

PREP_VERSION = "1"  # bump when tokenization logic changes, to invalidate caches


def default_cache_dir() -> Path:
    """$SFTFLOW_CACHE/datasets, else ~/.cache/sftflow/datasets."""
    return Path(os.environ.get("SFTFLOW_CACHE", Path.home() / ".cache" / "sftflow")) / "datasets"


@dataclass
class PrepStats:
    rows_in: int = 0
    rows_out: int = 0
    rows_truncated: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    total_tokens: int = 0
    target_tokens: int = 0
    fingerprint: str = ""
    cached: bool = False

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in self.rows_dropped.items()) or "none"
        return (f"{self.rows_out}/{self.rows_in} rows kept ({self.rows_truncated} truncated; dropped: {dropped}), "
                f"{self.total_tokens} tokens, {self.target_tokens} targets")


@dataclass
class PreparedSplit:
    dataset: Dataset  # columns: input_ids, labels, num_targets
    stats: PrepStats


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None))).encode())
    return h.hexdigest()[:16]


def segment_rows(samples: Sequence[Any], tokenizer: Any, *, name: str = "samples",
                 origins: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Validate and convert samples up front, so an error names the sample's index (or file and line)."""
    where = origins if origins is not None else [f"{name}[{i}]" for i in range(len(samples))]
    rows = [to_segments(s, tokenizer, where=w).as_row() for s, w in zip(samples, where)]
    if not rows:
        raise DataError(f"{name}: no samples to train on (the list is empty)")
    return rows


def prepare_samples(
    samples: list[Any],
    tokenizer: Any,
    *,
    seq_length: int,
    truncation_side: Literal["left", "right"],
    cache_dir: str | Path | None = None,
    name: str = "samples",
    origins: Sequence[str] | None = None,
) -> PreparedSplit:
    rows = segment_rows(samples, tokenizer, name=name, origins=origins)
    key = _fingerprint(rows, tokenizer, seq_length, truncation_side)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    arrow_path, stats_path = cache / f"{key}.arrow", cache / f"{key}.stats.json"
    if arrow_path.exists() and stats_path.exists():
        stats = PrepStats(**json.loads(stats_path.read_text()))
        stats.cached = True
        return PreparedSplit(Dataset.from_file(str(arrow_path)), stats)

    cache.mkdir(parents=True, exist_ok=True)
    stats = PrepStats(rows_in=len(rows), fingerprint=key)
    dropped: Counter[str] = Counter()
    tokenize = _BatchTokenizer(tokenizer, seq_length, truncation_side, stats, dropped)
    with _quiet_datasets():
        ds = Dataset.from_list(rows).map(
            tokenize, batched=True, batch_size=1000, remove_columns=["texts", "trainable", "templated"],
            cache_file_name=str(arrow_path), new_fingerprint=key, load_from_cache_file=False,
            desc=f"Tokenizing {name}",
        )
    stats.rows_dropped = dict(dropped)
    stats.rows_out = len(ds)
    if stats.rows_out == 0:
        arrow_path.unlink(missing_ok=True)
        raise DataError(f"{name}: every row was dropped ({stats.summary()}); "
                        f"train.seq_length={seq_length} is shorter than every prompt, or the rows have no targets")
    if stats.rows_dropped:
        logger.warning("%s: dropped rows: %s", name, stats.rows_dropped)
    tmp = stats_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(stats)))
    tmp.replace(stats_path)  # written last: a cache entry without it is never trusted
    return PreparedSplit(ds, stats)


class _BatchTokenizer:
    """The map function: one tokenizer call for all segments of a batch, then masking per row."""

    def __init__(self, tokenizer, seq_length: int, side: Literal["left", "right"], stats: PrepStats,
                 dropped: Counter[str]):
        self.tokenizer = tokenizer
        self.seq_length = seq_length
        self.side = side
        self.stats = stats
        self.dropped = dropped
        self.bos_id = _default_bos(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise DataError("the tokenizer has no EOS token, so a completion's end cannot be learned; "
                            "set tokenizer.tokenizer_path to a tokenizer that has one")

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        flat = [text for texts in batch["texts"] for text in texts]
        encoded = self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        out: dict[str, list] = {"input_ids": [], "labels": [], "num_targets": []}
        cursor = 0
        for texts, trainable, templated in zip(batch["texts"], batch["trainable"], batch["templated"]):
            seg_ids = encoded[cursor : cursor + len(texts)]
            cursor += len(texts)
            ids, labels = build_example(
                seg_ids, trainable,
                bos_id=None if templated else self.bos_id,
                eos_id=None if templated else self.eos_id,
            )
            ids, labels, was_cut = truncate(ids, labels, self.seq_length, self.side)
            n_targets = count_targets(labels)
            if n_targets == 0:
                self.dropped[self._drop_reason(labels, was_cut)] += 1
                continue
            self.stats.rows_truncated += was_cut
            self.stats.total_tokens += len(ids)
            self.stats.target_tokens += n_targets
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["num_targets"].append(n_targets)
        return out

    def _drop_reason(self, labels: list[int], was_cut: bool) -> str:
        if was_cut and self.side == "right" and all(label == IGNORE_INDEX for label in labels):
            return "prompt_longer_than_seq_length"
        return "no_target_tokens_after_truncation" if was_cut else "no_target_tokens"


def _default_bos(tokenizer: Any) -> int | None:
    """The BOS id if this tokenizer adds one by default (Llama does, GPT-2 doesn't)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if probe and probe[0] == bos else None


def encode_prompt(segments: Segments, tokenizer: Any) -> list[int]:
    """Prompt ids for generation, built exactly as training builds a row's prompt."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in segments.texts]
    input_ids, _ = build_example(ids, [False] * len(ids), bos_id=None if segments.templated else _default_bos(tokenizer),
                                 eos_id=None)
    return input_ids


def _fingerprint(rows: list[dict[str, Any]], tokenizer: Any, seq_length: int, side: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([PREP_VERSION, tokenizer_fingerprint(tokenizer), seq_length, side]).encode())
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False).encode())
    return h.hexdigest()[:24]


class _quiet_datasets:
    """datasets logs a line per cache write; keep its progress bar, drop the chatter."""

    def __enter__(self):
        self.level = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity_error()

    def __exit__(self, *exc):
        datasets.logging.set_verbosity(self.level)
