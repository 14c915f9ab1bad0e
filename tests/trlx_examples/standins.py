"""Local stand-ins for what trlX's examples fetch from the hub: the data sets (folders of JSONL
with the hub sets' columns and splits, loaded by the real ``datasets.load_dataset``), the model
(the embedded one, or a folder given in $SFT_EXAMPLE_MODEL) and the sentiment classifier
(``lvwerra/distilbert-imdb``, here a word list with the pipeline's call and output shape)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

DATA = Path(__file__).resolve().parent / "data"
IMDB = str(DATA / "imdb")  # was "imdb"
ALPACA = str(DATA / "alpaca")  # was "tatsu-lab/alpaca"
HH = str(DATA / "full-hh-rlhf")  # was "Dahoas/full-hh-rlhf"
MODEL = os.environ.get("SFT_EXAMPLE_MODEL", "embedded:tiny-llama")  # was "EleutherAI/gpt-j-6B"

POSITIVE = {"wonderful", "moving", "brilliant", "charming", "delightful", "superb", "good", "great", "positive"}
NEGATIVE = {"dull", "clumsy", "tedious", "awful", "boring", "messy", "bad", "poor", "negative"}


def pipeline(task: str, model: str, top_k: int = 2, truncation: bool = True, batch_size: int = 256,
             device: int = -1) -> Callable[[list[str]], list[list[dict[str, Any]]]]:
    """``transformers.pipeline("sentiment-analysis", ...)``'s shape: texts -> per text, both labels with a score."""
    assert task == "sentiment-analysis" and top_k == 2, (task, top_k)

    def classify(texts: list[str]) -> list[list[dict[str, Any]]]:
        out = []
        for text in texts:
            words = [w.strip(".,!?").lower() for w in text.split()]
            good, bad = sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
            score = (good + 1) / (good + bad + 2)
            out.append(sorted([{"label": "POSITIVE", "score": score}, {"label": "NEGATIVE", "score": 1 - score}],
                              key=lambda d: -d["score"]))
        return out

    return classify
