"""Data at scale: the streaming, multi-process preparation gives exactly the rows the list-based one gave,
caches by the file's content, names a malformed row's line, and reports its progress.

The golden digests below were computed by the list-based implementation (commit 8f34354) on the
same seeded files: every token and label of every train and held-out row, the counts, and the
held-out prompts. A change to masking or tokenization that is meant must update them on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

import datasets
import pytest

from sft_core import DataError, default_sft_config
from sft_core.data import streaming
from sft_core.data.prepare import row_lengths
from sft_core.data.prepared import prepare_from_config, source_key
from sft_core.modeling import load_tokenizer
from sft_core.run import Run, data_cache_key, prepare_data

WORDS = ("alpha beta gamma delta river stone cloud apple seven blue quick lazy fox dog tree moon sum list "
         "write explain add translate poem short answer number city capital").split()
# 10k Alpaca rows at seq_length 256 with the byte tokenizer: some rows are truncated, a few have a
# prompt longer than 256 bytes and are dropped, every fifth has an "input".
GOLDEN_ALPACA = "8d45e6dcaa169e19"
GOLDEN_SHAREGPT = "09019891cd0cf95e"


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_alpaca(path, n_rows: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_rows):
            long_prompt = i % 997 == 5
            row = {"instruction": _text(rng, 40, 60) if long_prompt else _text(rng, 3, 12),
                   "input": _text(rng, 2, 10) if i % 5 == 0 else "",
                   "output": _text(rng, 1, 45), "category": rng.choice(["math", "prose"])}
            f.write(json.dumps(row) + "\n")
    return str(path)


def write_sharegpt(path, n_rows: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_rows):
            turns = [{"from": "system", "value": "Be brief."}] if rng.random() < 0.3 else []
            for _ in range(rng.randint(1, 3)):
                turns += [{"from": "human", "value": _text(rng, 2, 8)}, {"from": "gpt", "value": _text(rng, 1, 8)}]
            f.write(json.dumps({"conversations": turns, "key_phrase": rng.choice(WORDS)}) + "\n")
    return str(path)


def digest(bundle) -> str:
    """One hash over every prepared row (tokens, labels, target counts), the counts and the eval prompts."""
    h = hashlib.sha256()
    for split in (bundle.train, bundle.eval):
        if split is None:
            h.update(b"none")
            continue
        stats = split.stats
        h.update(json.dumps([stats.rows_in, stats.rows_out, stats.rows_truncated, sorted(stats.rows_dropped.items()),
                             stats.total_tokens, stats.target_tokens]).encode())
        for batch in split.dataset.iter(batch_size=1000):
            h.update(json.dumps([batch["input_ids"], batch["labels"], batch["num_targets"]]).encode())
    h.update(json.dumps(bundle.eval_prompts, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _no_fallback(monkeypatch):
    """The streaming path must do it: reading row by row is only for naming a bad row."""
    from sft_core.data import prepared

    monkeypatch.setattr(prepared, "_prepare_listed", lambda *a: pytest.fail("the streaming reader fell back"))


def _config(tmp_path, path: str, **data):
    return default_sft_config().evolve(train=dict(seq_length=256),
                                       data=dict(path=path, cache_dir=str(tmp_path / "cache"), **data))


@pytest.mark.parametrize("num_proc", [1, 2])
def test_10k_alpaca_rows_are_prepared_token_for_token_as_before(tmp_path, monkeypatch, num_proc):
    """Two processes give the same rows in the same order, and the same counts, as one."""
    _no_fallback(monkeypatch)
    config = _config(tmp_path, write_alpaca(tmp_path / "alpaca.jsonl", 10_000), template="alpaca", num_proc=num_proc)
    bundle = prepare_from_config(config, load_tokenizer(config.tokenizer, config.model))
    assert bundle.train.stats.rows_dropped and bundle.train.stats.rows_truncated  # both paths are exercised
    assert digest(bundle) == GOLDEN_ALPACA


def test_sharegpt_rows_are_prepared_token_for_token_as_before(tmp_path, monkeypatch):
    _no_fallback(monkeypatch)
    config = _config(tmp_path, write_sharegpt(tmp_path / "chat.jsonl", 600)).evolve(
        tokenizer=dict(chat_template="chatml"))
    bundle = prepare_from_config(config, load_tokenizer(config.tokenizer, config.model))
    assert digest(bundle) == GOLDEN_SHAREGPT


def test_a_second_run_reads_the_cache_without_opening_the_data(tmp_path, monkeypatch):
    config = _config(tmp_path, write_alpaca(tmp_path / "a.jsonl", 300), template="alpaca")
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    first = prepare_from_config(config, tokenizer)
    monkeypatch.setattr(streaming, "open_data", lambda *a, **k: pytest.fail("the data was opened again"))
    again = prepare_from_config(config.evolve(optimizer=dict(kwargs=dict(lr=1e-5)), data=dict(num_proc=2)), tokenizer)
    assert again.train.stats.cached and digest(again) == digest(first)


def test_the_cache_key_follows_what_decides_the_tokens(tmp_path):
    path = write_alpaca(tmp_path / "a.jsonl", 50)
    config = _config(tmp_path, path, template="alpaca")
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    key = source_key(config, tokenizer)
    chatml = load_tokenizer(config.tokenizer.model_copy(update=dict(chat_template="chatml")), config.model)
    changed = [source_key(config.evolve(data=dict(template="Q: {instruction}\nA: ")), tokenizer),
               source_key(config.evolve(train=dict(seq_length=128)), tokenizer),
               source_key(config.evolve(tokenizer=dict(truncation_side="left")), tokenizer),
               source_key(config, chatml)]
    assert key not in changed and len(set(changed)) == len(changed)
    with open(path, "a") as f:
        f.write(json.dumps({"instruction": "one more", "input": "", "output": "row"}) + "\n")
    assert source_key(config, tokenizer) != key


def test_a_malformed_row_is_named_by_file_and_line(tmp_path):
    path = write_alpaca(tmp_path / "a.jsonl", 30)
    lines = open(path).read().splitlines()
    lines[6] = '{"instruction": "broken", "output": '
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    config = _config(tmp_path, path, template="alpaca")
    with pytest.raises(DataError, match=f"{path}:7: malformed JSON"):
        prepare_from_config(config, load_tokenizer(config.tokenizer, config.model))


def test_the_run_reports_progress_and_links_the_cached_files(tmp_path):
    config = _config(tmp_path, write_alpaca(tmp_path / "a.jsonl", 400), template="alpaca")
    run = Run(name="r", root=str(tmp_path / "r"), config=config, data_key=data_cache_key(config),
              prepared_root=str(tmp_path / "prepared"))
    calls = []
    data = prepare_data(run, on_progress=lambda *args: calls.append(args))
    assert calls[-1][:2] == (400, 400) and calls[-1][2] > 0
    train = datasets.load_from_disk(data.path + "/train")
    assert row_lengths(train) == [len(ids) for ids in train["input_ids"]]
    assert data.train_rows + sum(data.dropped_rows.values()) == 380  # 20 rows (5%) are held out
    cached = tmp_path / "cache" / source_key(config, load_tokenizer(config.tokenizer, config.model)) / "train"
    linked = tmp_path / "prepared" / run.data_key / "train"
    name = "data-00000-of-00001.arrow"
    assert os.stat(cached / name).st_ino == os.stat(linked / name).st_ino  # hard-linked, not rewritten


def test_a_saved_dataset_dict_trains_on_data_split(tmp_path):
    rows = [{"prompt": f"q{i} ", "completion": f"a{i}"} for i in range(20)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:10]),
                          "test": datasets.Dataset.from_list(rows[10:])}).save_to_disk(str(tmp_path / "saved"))
    config = _config(tmp_path, str(tmp_path / "saved"), split="test", eval_fraction=0)
    bundle = prepare_from_config(config, load_tokenizer(config.tokenizer, config.model))
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    assert tokenizer.decode(bundle.train.dataset[0]["input_ids"]).startswith("q10 a10")
    with pytest.raises(DataError, match="no 'dev' split"):
        prepare_from_config(config.evolve(data=dict(split="dev")), tokenizer)


ROWS = [{"prompt": f"q{i} ", "completion": f"a{i}", "label": i % 3, "topic": ["x", "y"][i % 2]} for i in range(60)]


@pytest.mark.parametrize("suffix,data", [
    ("jsonl", {}), ("json", {}), ("csv", {}), ("parquet", {}), ("txt", {}),
    ("jsonl", {"filter": "label == 1", "max_rows": 7}), ("parquet", {"template": "Q ({topic}): {prompt}"}),
    ("jsonl", {"eval_path": "same", "max_eval_prompts": 3}), ("csv", {"filter": "topic == x"}),
])
def test_the_streaming_reader_gives_the_rows_the_row_by_row_reader_gives(tmp_path, monkeypatch, suffix, data):
    from sft_core.data import prepared

    path = tmp_path / f"d.{suffix}"
    if suffix == "txt":
        path.write_text("".join(f"line {i}\n" + ("\n" if i % 4 == 0 else "") for i in range(60)))
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == "json":
        path.write_text(json.dumps(ROWS))
    else:
        ds = datasets.Dataset.from_list(ROWS)
        ds.to_csv(str(path), index=False) if suffix == "csv" else ds.to_parquet(str(path))
    if data.get("eval_path") == "same":
        data = {**data, "eval_path": str(path)}
    config = _config(tmp_path, str(path), eval_fraction=0.1, **data)
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    read_row_by_row = prepared._prepare_listed
    with monkeypatch.context() as patch:
        _no_fallback(patch)
        streamed = prepare_from_config(config, tokenizer)
    listed = read_row_by_row(config.evolve(data=dict(cache_dir=str(tmp_path / "listed"))), tokenizer, None, None, None)
    assert digest(streamed) == digest(listed)
