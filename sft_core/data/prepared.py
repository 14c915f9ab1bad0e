"""Prepared data on disk: tokenized train/eval Arrow sets plus eval prompts, reusable by any process.

A prepared folder is itself a valid ``data.path``: the Prefect flow prepares once, and the
trainer (in-process, or a torchrun child) reads the folder instead of tokenizing again.

Data named by ``data.path`` (a file, folder or hub name) is prepared as memory-mapped Arrow tables,
on ``data.num_proc`` processes, into ``data.cache_dir/<key>``: the key hashes the file's bytes and
the settings that decide the tokens, so a second run reads the folder without opening the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import datasets
from datasets import Dataset, DatasetInfo, load_from_disk
from pydantic import BaseModel, Field

from sft_core.config import EMBEDDED_DATA, TRLConfig
from sft_core.data.prepare import (
    PREP_VERSION, PreparedSplit, PrepStats, ProgressFn, RowProgress, default_cache_dir, prepare_rows, prepare_samples,
    require_rows, tokenizer_fingerprint,
)
from sft_core.data.sources import fingerprint_source, load_data
from sft_core.errors import DataError

logger = logging.getLogger(__name__)

MARKER = "sftflow_prepared.json"


@dataclass
class PreparedBundle:
    train: PreparedSplit
    eval: PreparedSplit | None
    eval_prompts: list[Any] | None
    source: str

    @property
    def fingerprint(self) -> str:
        return self.train.stats.fingerprint + (f"+{self.eval.stats.fingerprint}" if self.eval else "")


def is_prepared(path: str | Path | None) -> bool:
    return bool(path) and (Path(path) / MARKER).is_file()


def prepare_from_config(
    config: TRLConfig, tokenizer: Any, *, samples: Sequence[Any] | None = None,
    eval_samples: Sequence[Any] | None = None, eval_prompts: Sequence[Any] | None = None,
    on_progress: ProgressFn | None = None,
) -> PreparedBundle:
    """Samples given -> tokenize them; else load ``config.data`` (a prepared folder is read as is).

    ``on_progress(rows_done, rows_total, seconds)`` follows the tokenizing of data named by data.path."""
    if samples is None and is_prepared(config.data.path):
        bundle = load_prepared(config.data.path, tokenizer, config)
    elif samples is None and config.data.path not in (None, EMBEDDED_DATA):
        bundle = prepare_source(config, tokenizer, on_progress=on_progress)
        if eval_samples:
            bundle.eval = prepare_samples(list(eval_samples), tokenizer, name="eval_samples",
                                          seq_length=config.train.seq_length, cache_dir=config.data.cache_dir,
                                          truncation_side=config.tokenizer.truncation_side)
    else:
        return _prepare_listed(config, tokenizer, samples, eval_samples, eval_prompts)
    if eval_prompts is not None:
        bundle.eval_prompts = list(eval_prompts)
    return bundle


def _prepare_listed(config: TRLConfig, tokenizer: Any, samples: Sequence[Any] | None,
                    eval_samples: Sequence[Any] | None, eval_prompts: Sequence[Any] | None) -> PreparedBundle:
    """Rows held in lists: samples given to train(), the demo, or data.path read row by row."""
    origins, source = None, "samples"
    if samples is None:
        loaded = load_data(config.data, seed=config.train.seed)
        samples, origins, source = loaded.train, loaded.train_origins, loaded.source
        eval_samples = loaded.eval if eval_samples is None else eval_samples
        eval_prompts = loaded.eval_prompts if eval_prompts is None else eval_prompts
    common = dict(seq_length=config.train.seq_length, truncation_side=config.tokenizer.truncation_side,
                  cache_dir=config.data.cache_dir)
    train = prepare_samples(list(samples), tokenizer, name="samples", origins=origins, **common)
    held_out = prepare_samples(list(eval_samples), tokenizer, name="eval_samples", **common) if eval_samples else None
    return PreparedBundle(train, held_out, list(eval_prompts) if eval_prompts is not None else None, source)


def source_key(config: TRLConfig, tokenizer: Any) -> str:
    """What decides the tokens of data named by data.path: its bytes, the data settings (template,
    columns, filter, split), the tokenizer with its chat template, seq_length, truncation side,
    the seed (it draws the held-out rows) and the masking code's version. Not the number of processes."""
    data = config.data
    decides = [PREP_VERSION, data.model_dump(mode="json", exclude={"cache_dir", "num_proc"}),
               fingerprint_source(data.path), fingerprint_source(data.eval_path), tokenizer_fingerprint(tokenizer),
               config.train.seq_length, config.tokenizer.truncation_side, config.train.seed]
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:24]


def prepare_source(config: TRLConfig, tokenizer: Any, *, on_progress: ProgressFn | None = None) -> PreparedBundle:
    """data.path as memory-mapped Arrow, tokenized on data.num_proc processes, into data.cache_dir/<key>.

    Should anything fail on the way, the data is read again row by row (``sources.load_data``), whose
    error names the file and line of the row at fault; data it reads without error is prepared from there."""
    from sft_core.data.streaming import open_data

    cache = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    key = source_key(config, tokenizer)
    folder, work = cache / key, cache / f".work-{key}-{os.getpid()}"  # two processes may prepare the same key
    if is_prepared(folder):
        bundle = load_prepared(folder, tokenizer, config)
        bundle.train.stats.cached = True
        return bundle
    common = dict(seq_length=config.train.seq_length, truncation_side=config.tokenizer.truncation_side, work=work)
    try:
        try:
            data = open_data(config.data, seed=config.train.seed, cache_dir=cache / "arrow")
            progress = RowProgress(len(data.train) + (len(data.eval) if data.eval is not None else 0), on_progress)
            train = prepare_rows(data.train, tokenizer, config.data, name="train", key=key, progress=progress, **common)
            held_out = prepare_rows(data.eval, tokenizer, config.data, name="eval", key=f"{key}e", progress=progress,
                                    **common) if data.eval is not None else None
            progress.close()
            bundle = PreparedBundle(train, held_out, data.eval_prompts, data.source)
        except Exception as err:  # noqa: BLE001 - any failure: let the row-by-row reader name the row
            logger.warning("Reading %s row by row, to find what failed: %s", config.data.path, err)
            bundle = _prepare_listed(config, tokenizer, None, None, None)
        require_rows(bundle.train.stats, "samples", config.train.seq_length)
        save_prepared(bundle, folder, tokenizer=tokenizer, seq_length=config.train.seq_length)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_prepared(folder, tokenizer, config)


def save_prepared(bundle: PreparedBundle, directory: str | Path, *, tokenizer: Any, seq_length: int) -> Path:
    """Write atomically: a crash leaves the complete folder or none. Splits backed by Arrow files are
    hard-linked (copied across file systems), not read and rewritten."""
    final = Path(directory)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, split in (("train", bundle.train), ("eval", bundle.eval)):
        if split is not None and split.files:
            _link_arrow_files(split.files, tmp / name, fingerprint=split.stats.fingerprint or name)
        elif split is not None:
            with _no_progress_bars():
                split.dataset.save_to_disk(str(tmp / name))
    meta = {
        "source": bundle.source, "fingerprint": bundle.fingerprint, "seq_length": seq_length,
        "tokenizer": tokenizer_fingerprint(tokenizer), "eval_prompts": bundle.eval_prompts,
        "train_stats": asdict(bundle.train.stats), "eval_stats": asdict(bundle.eval.stats) if bundle.eval else None,
    }
    (tmp / MARKER).write_text(json.dumps(meta, ensure_ascii=False))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _link_arrow_files(files: list[str], folder: Path, *, fingerprint: str) -> None:
    """A save_to_disk folder made of existing Arrow files (what Dataset.save_to_disk writes beside them)."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{len(files):05d}.arrow" for i in range(len(files))]
    for source, name in zip(files, names):
        try:
            os.link(source, folder / name)
        except OSError:
            shutil.copyfile(source, folder / name)
    features = Dataset.from_file(files[0]).features
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": fingerprint, "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = asdict(DatasetInfo(features=features))
    (folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))


@contextlib.contextmanager
def _no_progress_bars():
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_prepared(directory: str | Path, tokenizer: Any, config: TRLConfig) -> PreparedBundle:
    path = Path(directory)
    meta = json.loads((path / MARKER).read_text())
    if meta["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise DataError("prepared with another tokenizer; prepare it again for this model", source=str(path))
    if meta["seq_length"] != config.train.seq_length:
        raise DataError(f"prepared for seq_length={meta['seq_length']}, but train.seq_length="
                        f"{config.train.seq_length}; prepare it again", source=str(path))

    def split(name: str, stats: dict | None) -> PreparedSplit | None:
        if stats is None:
            return None
        with _no_progress_bars():
            dataset = load_from_disk(str(path / name))
        assert isinstance(dataset, Dataset)
        files = [c["filename"] for c in dataset.cache_files]
        if "status" in dataset.column_names:  # whether each row was truncated: counted already, not trained on
            dataset = dataset.remove_columns("status")
        return PreparedSplit(dataset, PrepStats(**stats), files)

    return PreparedBundle(split("train", meta["train_stats"]), split("eval", meta["eval_stats"]),
                          meta["eval_prompts"], meta["source"])


class PreparedData(BaseModel):
    """What a prepared folder holds, in numbers: the prepare stage's result (plain JSON, no tensors)."""

    path: str
    source: str
    fingerprint: str
    train_rows: int
    eval_rows: int
    eval_prompts: int
    train_tokens: int
    target_tokens: int
    truncated_rows: int
    dropped_rows: dict[str, int] = Field(default_factory=dict)  # reason -> rows

    @classmethod
    def read(cls, directory: str | Path) -> PreparedData:
        meta = json.loads((Path(directory) / MARKER).read_text())
        train, held_out = meta["train_stats"], meta["eval_stats"]
        return cls(path=str(directory), source=meta["source"], fingerprint=meta["fingerprint"],
                   train_rows=train["rows_out"], eval_rows=held_out["rows_out"] if held_out else 0,
                   eval_prompts=len(meta["eval_prompts"] or []), train_tokens=train["total_tokens"],
                   target_tokens=train["target_tokens"], truncated_rows=train["rows_truncated"],
                   dropped_rows=train["rows_dropped"])

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in self.dropped_rows.items()) or "none"
        return (f"{self.train_rows} training rows ({self.target_tokens} target tokens), {self.eval_rows} held-out "
                f"rows, {self.eval_prompts} eval prompts; {self.truncated_rows} truncated; dropped: {dropped}")
