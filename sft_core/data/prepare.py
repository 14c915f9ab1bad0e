"""Tokenize rows into (input_ids, labels) with ``datasets.map``, on every core, cached by content fingerprint.

Rows are checked while they are prepared: a row left with no target tokens after truncation is
dropped and counted by reason, and a set where every row was dropped fails. The map returns a
``status`` per row (kept, kept after truncation, or dropped and why) instead of counting by side
effect, so the counts survive worker processes: they are summed from that column afterwards.

    split = prepare_samples(samples, tokenizer, seq_length=512, truncation_side="right")  # a list
    split = prepare_rows(arrow_rows, tokenizer, data_cfg, seq_length=512, ...)  # a memory-mapped table
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence as ListOf, Value, concatenate_datasets
from tqdm.auto import tqdm

from sft_core.config import DataConfig
from sft_core.data.formats import Segments, to_segments
from sft_core.data.masking import IGNORE_INDEX, build_example, count_targets, truncate
from sft_core.data.streaming import own_maps
from sft_core.errors import DataError

logger = logging.getLogger(__name__)

PREP_VERSION = "2"  # bump when tokenization logic changes, to invalidate caches (2: int32 columns, status)
AUTO_MIN_ROWS = 20_000  # num_proc="auto" below this: one process (a worker pool costs more than it saves)
CHUNK_MIN_ROWS = 50_000  # rows per map call; one call per chunk moves the progress bar (at most ~20 calls)
# status column: 0 kept, 1 kept after truncation, 2 + i dropped for DROP_REASONS[i]
DROP_REASONS = ("no_target_tokens", "no_target_tokens_after_truncation", "prompt_longer_than_seq_length")
TOKENIZED = Features({"input_ids": ListOf(Value("int32")), "labels": ListOf(Value("int32")),
                      "num_targets": Value("int32"), "status": Value("int8")})
ProgressFn = Callable[[int, int, float], None]  # (rows done, rows in all, seconds so far)


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
    files: list[str] = field(default_factory=list)  # Arrow files holding exactly these rows (plus status)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None))).encode())
    return h.hexdigest()[:16]


def resolve_num_proc(setting: int | Literal["auto"], num_rows: int) -> int:
    """data.num_proc -> processes: auto is the cores this process may use, but 1 below AUTO_MIN_ROWS."""
    if setting != "auto":
        return max(1, min(setting, num_rows))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if num_rows < AUTO_MIN_ROWS else cores


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
    """Samples held in a list (train()'s, the demo's): one process, cached by a hash of every row."""
    rows = segment_rows(samples, tokenizer, name=name, origins=origins)
    key = _fingerprint(rows, tokenizer, seq_length, truncation_side)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    stats_path = cache / f"{key}.stats.json"
    if stats_path.exists():
        meta = json.loads(stats_path.read_text())
        if all(Path(f).exists() for f in meta["files"]):
            stats = PrepStats(**meta["stats"])
            stats.cached = True
            return _split_from_files(meta["files"], stats)
    cache.mkdir(parents=True, exist_ok=True)
    tokenize = RowTokenizer(tokenizer, seq_length, truncation_side)
    split = tokenize_rows(Dataset.from_list(rows), tokenize, num_proc=1, work=cache / key, name=name, key=key)
    require_rows(split.stats, name, seq_length)
    tmp = stats_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stats": asdict(split.stats), "files": split.files}))
    tmp.replace(stats_path)  # written last: a cache entry without it is never trusted
    return split


def prepare_rows(rows: Dataset, tokenizer: Any, data: DataConfig, *, seq_length: int,
                 truncation_side: Literal["left", "right"], work: Path, name: str, key: str,
                 progress: RowProgress | None = None) -> PreparedSplit:
    """Rows as stored (an Arrow table): made into samples and tokenized in ``data.num_proc`` processes."""
    tokenize = RowTokenizer(tokenizer, seq_length, truncation_side, data=data, source=str(data.path))
    return tokenize_rows(rows, tokenize, num_proc=resolve_num_proc(data.num_proc, len(rows)), work=work, name=name,
                         key=key, progress=progress)


def tokenize_rows(rows: Dataset, tokenize: RowTokenizer, *, num_proc: int, work: Path, name: str, key: str,
                  progress: RowProgress | None = None) -> PreparedSplit:
    """Map ``tokenize`` over the rows in chunks (each chunk over ``num_proc`` processes, keeping row
    order), into Arrow files under ``work``; then drop the rows it marked, and sum the counts."""
    work.mkdir(parents=True, exist_ok=True)
    chunk = max(CHUNK_MIN_ROWS, math.ceil(len(rows) / 20))
    parts = []
    with _quiet_datasets():
        for k, span in enumerate(_chunks(rows, chunk)):
            # A chunk far smaller than the others (a held-out split's, a tail) is not worth a worker pool.
            procs = num_proc if len(span) >= min(chunk, len(rows)) // 4 else 1
            part = (own_maps(rows) if procs == 1 else rows).select(span)  # workers map the files anew
            parts.append(part.map(
                tokenize, batched=True, batch_size=1000, remove_columns=part.column_names, features=TOKENIZED,
                num_proc=procs if procs > 1 else None, cache_file_name=str(work / f"{name}-{k:05d}.arrow"),
                new_fingerprint=hashlib.sha256(f"{key}/{name}/{k}".encode()).hexdigest()[:16],
                load_from_cache_file=False,
            ))
            if progress is not None:
                progress.update(len(part))
        tokenized = concatenate_datasets(parts)
        stats = _count(tokenized, key)
        if stats.rows_out < stats.rows_in:
            tokenized = tokenized.filter(lambda s: [x < 2 for x in s], input_columns="status", batched=True,
                                         batch_size=10_000).flatten_indices(
                cache_file_name=str(work / f"{name}-kept.arrow"), num_proc=num_proc if num_proc > 1 else None)
    return _split_from_files([c["filename"] for c in tokenized.cache_files], stats)


def _chunks(rows: Dataset, size: int) -> list[range]:
    """Consecutive ranges of at most ``size`` rows, each over at most ``size`` rows of the files beneath.
    A held-out split's rows are spread over the whole file: a chunk of them would read every page of
    it, and the pages read count in RSS. Rows selected in file order (the splits, a filter) are cut by
    where they lie in the file; ``_indices`` is datasets' (private) mapping from rows to file rows."""
    n = len(rows)
    indices = getattr(rows, "_indices", None)
    positions = indices.column(0).to_numpy() if indices is not None and n else None
    if positions is None or np.any(np.diff(positions.astype(np.int64)) < 0):
        return [range(start, min(start + size, n)) for start in range(0, n, size)]
    bounds = np.searchsorted(positions, np.arange(int(positions[0]), int(positions[-1]) + 1, size))
    cuts = sorted({int(b) for b in bounds} | {n})  # a span of `size` file rows holds at most `size` rows
    return [range(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def row_lengths(dataset: Dataset) -> list[int]:
    """Tokens per row, from the input_ids column's offsets only (its tokens stay on disk): what
    length grouping needs, at a million rows too, where ``dataset["input_ids"]`` would load every token."""
    lengths: list[int] = []
    for table in dataset.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=100_000):
        lengths += pc.list_value_length(table.column("input_ids")).to_pylist()
    return lengths


def require_rows(stats: PrepStats, name: str, seq_length: int) -> None:
    """A set where every row was dropped is refused; some dropped rows are a warning."""
    if stats.rows_out == 0:
        raise DataError(f"{name}: every row was dropped ({stats.summary()}); "
                        f"train.seq_length={seq_length} is shorter than every prompt, or the rows have no targets")
    if stats.rows_dropped:
        logger.warning("%s: dropped rows: %s", name, stats.rows_dropped)


def _count(tokenized: Dataset, key: str) -> PrepStats:
    """The counts, from the status, num_targets and list-offset columns only (the tokens stay on disk)."""
    table = tokenized.data
    by_status = np.bincount(table.column("status").to_numpy(), minlength=2 + len(DROP_REASONS))
    dropped = {why: int(n) for why, n in zip(DROP_REASONS, by_status[2:]) if n}
    lengths = pc.list_value_length(table.column("input_ids"))
    return PrepStats(rows_in=len(tokenized), rows_out=int(by_status[:2].sum()), rows_truncated=int(by_status[1]),
                     rows_dropped=dropped, total_tokens=int(pc.sum(lengths).as_py() or 0),
                     target_tokens=int(pc.sum(table.column("num_targets")).as_py() or 0), fingerprint=key)


def _split_from_files(files: list[str], stats: PrepStats) -> PreparedSplit:
    dataset = concatenate_datasets([Dataset.from_file(f) for f in files])
    return PreparedSplit(dataset.remove_columns("status"), stats, files)


class RowProgress:
    """One bar (rows/s) over every row to tokenize, train and held-out, also reported to ``on_progress``."""

    def __init__(self, total: int, on_progress: ProgressFn | None = None):
        self.total, self.done, self.on_progress = total, 0, on_progress
        self.t_start = time.perf_counter()
        self.bar = tqdm(total=total, desc="Tokenizing", unit=" rows", dynamic_ncols=True)

    def update(self, rows: int) -> None:
        self.done += rows
        self.bar.update(rows)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total, time.perf_counter() - self.t_start)

    def close(self) -> None:
        self.bar.close()


class RowTokenizer:
    """The map function: a batch of rows -> input_ids, labels, num_targets and status, one tokenizer
    call for all segments of the batch. Rows are segments (columns texts/trainable/templated) or,
    given ``data``, rows as stored, made into samples here, in the worker."""

    def __init__(self, tokenizer, seq_length: int, side: Literal["left", "right"], *,
                 data: DataConfig | None = None, source: str = "rows"):
        self.tokenizer = tokenizer
        self.seq_length = seq_length
        self.side = side
        self.data = data
        self.source = source
        self.bos_id = _default_bos(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise DataError("the tokenizer has no EOS token, so a completion's end cannot be learned; "
                            "set tokenizer.tokenizer_path to a tokenizer that has one")

    def segments(self, batch: dict[str, list]) -> list[tuple[list[str], list[bool], bool]]:
        if self.data is None:
            return list(zip(batch["texts"], batch["trainable"], batch["templated"]))
        from sft_core.data.sources import Row, row_to_sample
        from sft_core.data.streaming import row_values

        out = []
        for i in range(len(next(iter(batch.values())))):
            row = Row(row_values(batch, i), f"{self.source}[row]")
            seg = to_segments(row_to_sample(row, self.data), self.tokenizer, where=row.where)
            out.append((seg.texts, seg.trainable, seg.templated))
        return out

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = self.segments(batch)
        flat = [text for texts, _, _ in rows for text in texts] or [""]
        encoded = self.tokenizer(flat, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        out: dict[str, list] = {"input_ids": [], "labels": [], "num_targets": [], "status": []}
        cursor = 0
        for texts, trainable, templated in rows:
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
                status = 2 + DROP_REASONS.index(self._drop_reason(labels, was_cut))
                ids, labels = [], []
            else:
                status = int(was_cut)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["num_targets"].append(n_targets)
            out["status"].append(status)
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
    """datasets logs a line per cache write and shows a bar per map call; RowProgress has the one bar."""

    def __enter__(self):
        self.level = datasets.logging.get_verbosity()
        self.bars = datasets.is_progress_bar_enabled()
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        datasets.logging.set_verbosity(self.level)
        if self.bars:
            datasets.enable_progress_bars()
