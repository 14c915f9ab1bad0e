"""Training data as memory-mapped Arrow tables, so that a million rows take no more memory than a thousand.

Files are parsed by ``datasets``' loaders (pyarrow, block by block, into an Arrow cache file); saved
folders and hub data sets are opened as they are. Filtering, the held-out split and ``max_rows`` only
select row indices, and rows become samples later, inside the tokenizing workers
(``prepare.RowTokenizer``). Nothing here holds every row as Python objects.

These loaders know rows, not lines. When anything here fails, the caller reads the data again with
``sources.load_data``, row by row, whose error names the file and line (``prepared.prepare_from_config``).
"""

from __future__ import annotations

import array
import csv
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Value

from sft_core.config import DataConfig
from sft_core.data.sources import (
    FILE_TYPES, SHAREGPT_COLUMN, Row, open_hub_dataset, open_saved_dataset, parse_filter, row_to_sample,
)
from sft_core.errors import DataError

LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}
SCALAR_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
                pa.types.is_boolean)


@dataclass
class ArrowData:
    train: Dataset  # the rows as stored: samples are made from them while tokenizing
    eval: Dataset | None
    eval_prompts: list[dict[str, Any]] | None  # {"prompt": ..., "reference": ..., **metadata}
    source: str


def open_data(cfg: DataConfig, *, seed: int, cache_dir: Path) -> ArrowData:
    """The train and held-out rows that ``sources.load_data`` gives, in the same order, as Arrow tables."""
    assert cfg.path is not None
    train = _filtered(open_rows(cfg.path, cfg, cache_dir), cfg.filter)
    if cfg.eval_path:
        held = _filtered(open_rows(cfg.eval_path, cfg, cache_dir), cfg.filter)
    else:
        train, held = split_rows(train, cfg.eval_fraction, seed)
    if cfg.max_rows is not None and cfg.max_rows < len(train):
        train = train.select(range(cfg.max_rows))
    held = held if held is not None and len(held) else None
    return ArrowData(train, held, eval_prompts(held, cfg) if held is not None else None, cfg.path)


def open_rows(path_or_name: str, cfg: DataConfig, cache_dir: Path) -> Dataset:
    """A file (parsed once into ``cache_dir``), a save_to_disk folder or a hub data set, memory-mapped."""
    import datasets

    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return open_saved_dataset(path, cfg.split)
    if not path.is_file():
        if path.suffix.lower() in FILE_TYPES or path_or_name.startswith((".", "/", "~")):
            raise DataError("file not found", source=str(path))
        return open_hub_dataset(path_or_name, cfg.split, cfg.subset)
    if path.suffix.lower() not in LOADERS:
        raise DataError(f"unsupported file type {path.suffix!r}; use one of {', '.join(FILE_TYPES)}", source=str(path))
    loader = LOADERS[path.suffix.lower()]
    options = _csv_as_strings(path) if loader == "csv" else {}
    rows = datasets.load_dataset(loader, data_files=str(path.resolve()), split="train", cache_dir=str(cache_dir),
                                 **options)
    if loader == "text":  # sources skips blank lines
        rows = rows.filter(lambda lines: [bool(t.strip()) for t in lines], input_columns="text", batched=True)
    if len(rows) == 0:
        raise DataError("the file has no rows", source=str(path))
    return rows


def _csv_as_strings(path: Path) -> dict[str, Any]:
    """Every CSV cell a string, as csv.DictReader (sources.py) gives it: no number or NaN guessing."""
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    return {"features": Features({name: Value("string") for name in header}), "keep_default_na": False,
            "na_filter": False}


def own_maps(rows: Dataset) -> Dataset:
    """The same rows over memory maps of their own. The pages a map has read count in the RSS of its
    process until it is closed, so in one process a million rows' file would end up counted whole;
    a chunk read through maps of its own lets them go when it is done. A file-backed Dataset pickles
    as its files' paths (no data), which is how datasets hands it to workers too."""
    return pickle.loads(pickle.dumps(rows)) if rows.cache_files else rows


def row_values(batch: dict[str, list], i: int) -> dict[str, Any]:
    """Row ``i`` of a batch as the dict sources.py would have parsed: Arrow gives every row every key
    (None where a row lacks it, also inside chat messages), so keys holding None are left out."""
    return {k: _without_none(v[i]) for k, v in batch.items() if v[i] is not None}


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _filtered(rows: Dataset, expression: str | None) -> Dataset:
    if not expression:
        return rows
    column, op, value = parse_filter(expression)
    if column not in rows.column_names:
        raise DataError(f"data.filter uses column {column!r}, which the rows lack")

    def keep(values: list) -> list[bool]:
        if any(v is None for v in values):  # sources names the row that lacks it
            raise DataError(f"data.filter: a row lacks column {column!r}")
        return [bool(op(v, value)) for v in values]

    kept = rows.filter(keep, input_columns=column, batched=True, batch_size=10_000)
    if len(kept) == 0:
        raise DataError(f"no row is left after data.filter {expression!r} ({len(rows)} rows before)")
    return kept


def split_rows(rows: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """sources._split by indices: the same seeded shuffle (over an int64 array: 8 bytes a row, not a
    list of Python ints) holds out the same rows."""
    n = len(rows)
    if fraction <= 0 or n < 2:
        return rows, None
    order = array.array("q", range(n))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(n * fraction))
    held = np.sort(np.frombuffer(order, dtype=np.int64)[:n_eval])
    del order
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return rows.select(np.flatnonzero(keep)), rows.select(held)


def eval_prompts(held: Dataset, cfg: DataConfig) -> list[dict[str, Any]] | None:
    """sources._prompts_with_references over the held-out rows, reading only as many rows as it keeps."""
    from sft_core.data.sources import _prompts_with_references

    held = own_maps(held)  # held-out rows lie all over the file: let go of the pages read here on return

    metadata_columns = _metadata_columns(held, cfg)
    prompts: list[dict[str, Any]] = []
    for batch in held.iter(batch_size=1000):
        n = len(next(iter(batch.values())))
        values = [row_values(batch, i) for i in range(n)]
        samples = [row_to_sample(Row(v, f"{cfg.eval_path or cfg.path}[held-out row]"), cfg) for v in values]
        prompts += _prompts_with_references(samples, cfg.max_eval_prompts,
                                            [{k: v[k] for k in metadata_columns} for v in values]) or []
        if len(prompts) >= cfg.max_eval_prompts:
            break
    return prompts[: cfg.max_eval_prompts] or None


def _metadata_columns(held: Dataset, cfg: DataConfig) -> list[str]:
    """sources._row_metadata's columns: scalar in every row (no nulls), besides the trained ones."""
    used = {cfg.text_column, cfg.prompt_column, cfg.completion_column, cfg.messages_column, SHAREGPT_COLUMN,
            "reference", "prompt"}
    candidates = [name for name, field in zip(held.data.schema.names, held.data.schema)
                  if name not in used and any(is_type(field.type) for is_type in SCALAR_TYPES)]
    if not candidates:
        return []
    nulls = dict.fromkeys(candidates, 0)
    for table in held.select_columns(candidates).with_format("arrow").iter(batch_size=100_000):
        for name in candidates:
            nulls[name] += table.column(name).null_count
    return sorted(name for name in candidates if nulls[name] == 0)
