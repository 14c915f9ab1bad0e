"""The embedded demo data set: short instruction tasks a tiny model can learn in minutes.

Each row is a (prompt, completion) pair such as ("reverse plonk\n", "knolp"). Held-out
prompts never occur in the training split, so exact match on them measures generalization.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

TASKS = ("reverse", "upper", "add")


@dataclass(frozen=True)
class DemoSplit:
    train: list[tuple[str, str]]
    held_out: list[tuple[str, str]]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7)))


def make_demo_row(task: str, rng: random.Random) -> tuple[str, str]:
    if task == "reverse":
        word = _word(rng)
        return f"reverse {word}\n", word[::-1]
    if task == "upper":
        word = _word(rng)
        return f"upper {word}\n", word.upper()
    if task == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"add {a} {b}\n", str(a + b)
    raise ValueError(f"unknown demo task {task!r}; known: {', '.join(TASKS)}")


def make_demo_split(num_rows: int, *, held_out_fraction: float = 0.05, seed: int = 0) -> DemoSplit:
    """Deterministic for a seed; tasks take turns; prompts are unique across both splits.

    A task whose prompts run out (there are 10,000 additions) drops out of the rotation.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    live = list(TASKS)
    misses = 0
    while len(rows) < num_rows:
        if not live:
            raise ValueError(f"the demo tasks have fewer than {num_rows} distinct prompts")
        task = live[len(rows) % len(live)]
        prompt, completion = make_demo_row(task, rng)
        if prompt in seen:
            misses += 1
            if misses > 1000:  # this task is (nearly) exhausted
                live.remove(task)
                misses = 0
            continue
        misses = 0
        seen.add(prompt)
        rows.append((prompt, completion))
    n_held_out = max(1, round(num_rows * held_out_fraction))
    return DemoSplit(train=rows[n_held_out:], held_out=rows[:n_held_out])
