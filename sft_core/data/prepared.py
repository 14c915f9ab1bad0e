"""Prepared data on disk: tokenized train/eval Arrow sets plus eval prompts, reusable by any process.

A prepared folder is itself a valid ``data.path``: the Prefect flow prepares once, and the
trainer (in-process, or a torchrun child) reads the folder instead of tokenizing again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import datasets
from datasets import Dataset, load_from_disk
from pydantic import BaseModel, Field

from sft_core.config import SFTConfig
from sft_core.data.prepare import PreparedSplit, PrepStats, prepare_samples, tokenizer_fingerprint
from sft_core.data.sources import load_data
from sft_core.errors import DataError

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


def is_prepared(path: str | None) -> bool:
    return bool(path) and (Path(path) / MARKER).is_file()


def prepare_from_config(
    config: SFTConfig, tokenizer: Any, *, samples: Sequence[Any] | None = None,
    eval_samples: Sequence[Any] | None = None, eval_prompts: Sequence[Any] | None = None,
) -> PreparedBundle:
    """Samples given -> tokenize them; else load ``config.data`` (a prepared folder is read as is)."""
    if samples is None and is_prepared(config.data.path):
        bundle = load_prepared(config.data.path, tokenizer, config)
        if eval_prompts is not None:
            bundle.eval_prompts = list(eval_prompts)
        return bundle
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


def save_prepared(bundle: PreparedBundle, directory: str | Path, *, tokenizer: Any, seq_length: int) -> Path:
    """Write atomically: a crash leaves the complete folder or none."""
    final = Path(directory)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with _no_progress_bars():
        bundle.train.dataset.save_to_disk(str(tmp / "train"))
        if bundle.eval is not None:
            bundle.eval.dataset.save_to_disk(str(tmp / "eval"))
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


@contextlib.contextmanager
def _no_progress_bars():
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_prepared(directory: str | Path, tokenizer: Any, config: SFTConfig) -> PreparedBundle:
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
        dataset = load_from_disk(str(path / name))
        assert isinstance(dataset, Dataset)
        return PreparedSplit(dataset, PrepStats(**stats))

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
