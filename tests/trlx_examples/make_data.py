"""Writes the small local stand-ins for the hub data sets the trlX examples load (run once; the files are
committed): imdb (text, label), tatsu-lab/alpaca (instruction, input, output), Dahoas/full-hh-rlhf
(prompt, chosen). Same columns and splits as the hub's, a few hundred short rows at most."""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data"
GOOD = ["wonderful", "moving", "brilliant", "charming", "delightful", "superb"]
BAD = ["dull", "clumsy", "tedious", "awful", "boring", "messy"]
THINGS = ["the acting", "the plot", "the music", "the ending", "the dialogue", "the pacing"]


def review(rng: random.Random, words: list[str]) -> str:
    return f"{rng.choice(THINGS).capitalize()} was {rng.choice(words)} and {rng.choice(THINGS)} was {rng.choice(words)}."


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(0)
    write(HERE / "imdb" / "train.jsonl", [{"text": review(rng, GOOD if i % 2 else BAD), "label": i % 2}
                                          for i in range(32)])
    # sft_alpaca rewrites 256 negative test reviews
    write(HERE / "imdb" / "test.jsonl", [{"text": review(rng, GOOD if i % 8 == 0 else BAD), "label": int(i % 8 == 0)}
                                         for i in range(300)])
    tasks = [("Reverse the word.", "abc", "cba"), ("Uppercase the word.", "abc", "ABC"),
             ("Name a colour.", "", "Blue."), ("Say hello.", "", "Hello!")]
    write(HERE / "alpaca" / "train.jsonl", [dict(zip(("instruction", "input", "output"), tasks[i % 4]))
                                            for i in range(32)])
    turns = [("What is two plus two?", "Four."), ("Name a fruit.", "An apple."), ("Say hi.", "Hi there!")]
    hh = [{"prompt": f"\n\nHuman: {q}\n\nAssistant:", "chosen": f" {a}\n\nHuman: Thanks."} for q, a in turns]
    write(HERE / "full-hh-rlhf" / "train.jsonl", [hh[i % 3] for i in range(32)])
    write(HERE / "full-hh-rlhf" / "test.jsonl", [hh[i % 3] for i in range(8)])


if __name__ == "__main__":
    main()
