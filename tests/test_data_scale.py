"""Data at scale: the streaming, multi-process preparation gives exactly the rows the list-based one gave.

The golden digests below were computed by the list-based implementation (commit 8f34354) on the
same seeded files: every token and label of every train and held-out row, the counts, and the
held-out prompts. A change to masking or tokenization that is meant must update them on purpose.
"""

from __future__ import annotations

import hashlib
import json
import random

from sft_core import default_sft_config
from sft_core.data.prepared import prepare_from_config
from sft_core.modeling import load_tokenizer

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


def _config(tmp_path, path: str, **data):
    return default_sft_config().evolve(train=dict(seq_length=256),
                                       data=dict(path=path, cache_dir=str(tmp_path / "cache"), **data))


def test_10k_alpaca_rows_are_prepared_token_for_token_as_before(tmp_path):
    config = _config(tmp_path, write_alpaca(tmp_path / "alpaca.jsonl", 10_000), template="alpaca")
    bundle = prepare_from_config(config, load_tokenizer(config.tokenizer, config.model))
    assert bundle.train.stats.rows_dropped and bundle.train.stats.rows_truncated  # both paths are exercised
    assert digest(bundle) == GOLDEN_ALPACA


def test_sharegpt_rows_are_prepared_token_for_token_as_before(tmp_path):
    config = _config(tmp_path, write_sharegpt(tmp_path / "chat.jsonl", 600)).evolve(
        tokenizer=dict(chat_template="chatml"))
    bundle = prepare_from_config(config, load_tokenizer(config.tokenizer, config.model))
    assert digest(bundle) == GOLDEN_SHAREGPT
