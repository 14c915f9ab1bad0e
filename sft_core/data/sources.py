"""Load training data named by the config: local files, saved datasets, a hub name, or the embedded demo.

Rows become samples through column mapping, an optional prompt template (Alpaca built in) and an
optional one-column filter such as ``label == 1``. This module reads every row into a list, parsing
files by hand so that a bad row is reported with its file and line: it is the slow, exact reader.
Large data goes through ``streaming`` (Arrow, memory-mapped), which falls back to this reader only
to name the row that made it fail.
"""

from __future__ import annotations

import ast
import hashlib
import csv
import io
import json
import operator
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sft_core.config import EMBEDDED_DATA, DataConfig
from sft_core.data.formats import sharegpt_to_messages
from sft_core.errors import DataError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
SHAREGPT_COLUMN = "conversations"  # ShareGPT rows: [{"from": "human"|"gpt"|"system"|"tool", "value": ...}]


@dataclass
class Row:
    values: dict[str, Any]
    where: str  # "file.jsonl:12", for error messages


@dataclass
class LoadedData:
    train: list[Any]  # samples in one of the shapes formats.py accepts
    train_origins: list[str]
    eval: list[Any] | None
    eval_prompts: list[dict[str, Any]] | None  # {"prompt": ..., "reference": ...}
    source: str


def load_data(cfg: DataConfig, *, seed: int) -> LoadedData:
    if cfg.path is None:
        raise DataError("data.path is not set and train() got no samples: nothing to train on")
    if cfg.path == EMBEDDED_DATA:
        return _embedded_demo(cfg)
    rows = _apply_filter(read_rows(cfg.path, split=cfg.split, subset=cfg.subset), cfg.filter, cfg.path)
    if cfg.eval_path:
        eval_rows = _apply_filter(read_rows(cfg.eval_path, split=cfg.split, subset=cfg.subset), cfg.filter,
                                  cfg.eval_path)
    else:
        rows, eval_rows = _split(rows, cfg.eval_fraction, seed)
    if cfg.max_rows is not None:
        rows = rows[: cfg.max_rows]
    train = [row_to_sample(r, cfg) for r in rows]
    held_out = [row_to_sample(r, cfg) for r in eval_rows]
    return LoadedData(
        train=train, train_origins=[r.where for r in rows], eval=held_out or None,
        eval_prompts=_prompts_with_references(held_out, cfg.max_eval_prompts, _row_metadata(eval_rows, cfg)),
        source=cfg.path,
    )


def _row_metadata(rows: list[Row], cfg: DataConfig) -> list[dict[str, Any]]:
    """Scalar columns besides the trained ones that every row has (e.g. "key_phrase"): metric metadata."""
    used = {cfg.text_column, cfg.prompt_column, cfg.completion_column, cfg.messages_column, SHAREGPT_COLUMN,
            "reference", "prompt"}
    common = set.intersection(*(set(r.values) for r in rows)) - used if rows else set()
    keep = sorted(k for k in common if all(isinstance(r.values[k], (str, int, float, bool)) for r in rows))
    return [{k: r.values[k] for k in keep} for r in rows]


def _embedded_demo(cfg: DataConfig) -> LoadedData:
    from sft_core.embedded import make_demo_split

    split = make_demo_split(cfg.num_demo_rows, held_out_fraction=max(cfg.eval_fraction, 0.01))
    train = [list(pair) for pair in split.train][: cfg.max_rows]
    held_out = [list(pair) for pair in split.held_out]
    return LoadedData(train=train, train_origins=[f"{EMBEDDED_DATA}[{i}]" for i in range(len(train))],
                      eval=held_out, eval_prompts=_prompts_with_references(held_out, cfg.max_eval_prompts),
                      source=EMBEDDED_DATA)


# -- reading --------------------------------------------------------------------------------------
def read_rows(path_or_name: str, *, split: str = "train", subset: str | None = None) -> list[Row]:
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return _read_saved_dataset(path, split)
    if path.is_file():
        readers: dict[str, Callable[[Path], list[Row]]] = {
            ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet, ".txt": _read_txt,
        }
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"unsupported file type {path.suffix!r}; use one of {', '.join(FILE_TYPES)}", source=str(path))
        rows = reader(path)
        if not rows:
            raise DataError("the file has no rows", source=str(path))
        return rows
    if path.suffix.lower() in FILE_TYPES or path_or_name.startswith((".", "/", "~")):
        raise DataError("file not found", source=str(path))
    return _read_hub(path_or_name, split, subset)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte {err.start}: {data[err.start:err.start + 1]!r}); re-encode the file as "
                        "UTF-8", source=str(path), line=line) from None


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for n, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"malformed JSON: {err.msg} (column {err.colno})", source=str(path), line=n) from None
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object per line, got {type(value).__name__}", source=str(path), line=n)
        rows.append(Row(value, f"{path}:{n}"))
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        value = json.loads(_decode(path))
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON: {err.msg} (column {err.colno})", source=str(path), line=err.lineno) from None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise DataError("column lists have different lengths", source=str(path))
        value = [dict(zip(value, items)) for items in zip(*value.values())]
    if not isinstance(value, list):
        raise DataError("expected a list of objects, or an object of equal-length column lists", source=str(path))
    rows = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"item {i}: expected an object, got {type(item).__name__}", source=str(path))
        rows.append(Row(item, f"{path}[{i}]"))
    return rows


def _read_csv(path: Path) -> list[Row]:
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    rows = []
    try:
        for record in reader:
            if None in record:
                raise DataError(f"more fields than the {len(reader.fieldnames or [])} header columns",
                                source=str(path), line=reader.line_num)
            rows.append(Row(dict(record), f"{path}:{reader.line_num}"))
    except csv.Error as err:
        raise DataError(f"malformed CSV: {err}", source=str(path), line=reader.line_num) from None
    return rows


def _read_txt(path: Path) -> list[Row]:
    return [Row({"text": line}, f"{path}:{n}") for n, line in enumerate(_decode(path).splitlines(), 1) if line.strip()]


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        raise DataError(f"cannot read parquet: {err}", source=str(path)) from None
    return [Row(r, f"{path}[row {i}]") for i, r in enumerate(records)]


def open_saved_dataset(path: Path, split: str) -> Any:
    """A folder written by save_to_disk, memory-mapped; of a DatasetDict, ``split``."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError("not a folder saved with Dataset.save_to_disk (no dataset_info.json/state.json)",
                        source=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"saved DatasetDict has no {split!r} split (splits: {list(loaded)}); "
                            "set data.split", source=str(path))
        loaded = loaded[split]
    return loaded


def open_hub_dataset(name: str, split: str, subset: str | None) -> Any:
    """A hub data set's split (Arrow, memory-mapped in the HF cache)."""
    import datasets

    try:
        return datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # noqa: BLE001 - offline errors come in several types
        raise DataError(
            f"{name!r} is not a local file or folder, and loading it from the HuggingFace hub failed "
            f"(offline, no such data set, subset or split): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. "
            f"Download it where there is network and set data.path to the local copy", source="data.path"
        ) from None


def _read_saved_dataset(path: Path, split: str) -> list[Row]:
    loaded = open_saved_dataset(path, split)
    return [Row(r, f"{path}[row {i}]") for i, r in enumerate(loaded.to_list())]


def _read_hub(name: str, split: str, subset: str | None) -> list[Row]:
    loaded = open_hub_dataset(name, split, subset)
    return [Row(r, f"{name}[row {i}]") for i, r in enumerate(loaded.to_list())]


# -- rows -> samples ------------------------------------------------------------------------------
def row_to_sample(row: Row, cfg: DataConfig) -> Any:
    values = row.values
    fmt = cfg.format
    if fmt == "auto":
        fmt = _detect_row_format(row, cfg)
    if fmt == "text":
        return _column(row, cfg.text_column, str)
    if fmt in ("chat", "dialogue"):
        if cfg.messages_column not in values and SHAREGPT_COLUMN in values:
            return sharegpt_to_messages(values[SHAREGPT_COLUMN], where=row.where)
        return _column(row, cfg.messages_column, list)
    completion = _column(row, "output" if cfg.template == "alpaca" else cfg.completion_column, str)
    if cfg.template == "alpaca":
        template = ALPACA_PROMPT_WITH_INPUT if str(values.get("input") or "").strip() else ALPACA_PROMPT
        prompt = _render_template(template, row)
    elif cfg.template:
        prompt = _render_template(cfg.template, row)
    else:
        prompt = _column(row, cfg.prompt_column, str)
    return [prompt, completion]


def _detect_row_format(row: Row, cfg: DataConfig) -> str:
    keys = row.values.keys()
    if cfg.template is not None:
        return "pairs"
    if cfg.messages_column in keys or SHAREGPT_COLUMN in keys:
        return "chat"
    if cfg.prompt_column in keys and cfg.completion_column in keys:
        return "pairs"
    if cfg.text_column in keys:
        return "text"
    raise DataError(
        f"cannot tell which columns to train on: found {sorted(keys)}; expected {cfg.text_column!r}, "
        f"{cfg.prompt_column!r}+{cfg.completion_column!r} or {cfg.messages_column!r}. Map yours with "
        "data.text_column / data.prompt_column / data.completion_column / data.messages_column, or set data.template",
        source=row.where,
    )


def _column(row: Row, name: str, kind: type) -> Any:
    if name not in row.values:
        raise DataError(f"missing column {name!r} (columns: {sorted(row.values)})", source=row.where)
    value = row.values[name]
    if not isinstance(value, kind):
        raise DataError(f"column {name!r}: expected {kind.__name__}, got {type(value).__name__}", source=row.where)
    return value


def _render_template(template: str, row: Row) -> str:
    try:
        return template.format_map({k: "" if v is None else v for k, v in row.values.items()})
    except KeyError as err:
        raise DataError(f"template needs column {err.args[0]!r}, which this row lacks (columns: {sorted(row.values)})",
                        source=row.where) from None
    except (ValueError, IndexError) as err:
        raise DataError(f"data.template is not a valid format string: {err}", source="data.template") from None


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}
_FILTER = re.compile(r"^\s*(\w+)\s*(==|!=|>=|<=|>|<|not in|in)\s*(.+?)\s*$")


def parse_filter(expression: str) -> tuple[str, Callable[[Any, Any], bool], Any]:
    match = _FILTER.match(expression)
    if not match:
        raise DataError(f"cannot parse {expression!r}; write COLUMN OP VALUE with OP one of {', '.join(_OPS)}, "
                        "e.g. 'label == 1'", source="data.filter")
    column, op, literal = match.groups()
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        value = literal  # a bare word compares as a string: lang == en
    return column, _OPS[op], value


def _apply_filter(rows: list[Row], expression: str | None, source: str) -> list[Row]:
    if not expression:
        return rows
    column, op, value = parse_filter(expression)
    kept = []
    for row in rows:
        if column not in row.values:
            raise DataError(f"data.filter uses column {column!r}, which this row lacks", source=row.where)
        try:
            if op(row.values[column], value):
                kept.append(row)
        except TypeError as err:
            raise DataError(f"data.filter {expression!r}: {err}", source=row.where) from None
    if not kept:
        raise DataError(f"no row is left after data.filter {expression!r} ({len(rows)} rows before)", source=source)
    return kept


def _split(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def _prompts_with_references(samples: list[Any], limit: int,
                             metadata: list[dict[str, Any]] | None = None) -> list[dict[str, Any]] | None:
    prompts = []
    for i, sample in enumerate(samples):
        extra = metadata[i] if metadata else {}
        if isinstance(sample, list) and len(sample) == 2 and all(isinstance(s, str) for s in sample):
            prompts.append({"prompt": sample[0], "reference": sample[1], **extra})
        elif isinstance(sample, (list, dict)):
            messages = sample["messages"] if isinstance(sample, dict) else sample
            if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
                prompts.append({"prompt": messages[:-1], "reference": messages[-1]["content"], **extra})
    return prompts[:limit] or None


def fingerprint_source(path_or_name: str | None) -> str:
    """A content hash of a data file or folder (names, sizes and bytes), for caching prepared data.

    Hub names and the embedded demo hash their name: their content is fixed by the name and config.
    """
    h = hashlib.sha256(str(path_or_name).encode())
    path = Path(str(path_or_name)).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:24]
