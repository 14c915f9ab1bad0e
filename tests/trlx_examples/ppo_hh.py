"""Stand-in for trlX's examples/hh/ppo_hh.py ``create_reward_fn`` (a GPT-J reward model behind a Triton
server): a local reward, the share of an output's characters that are letters, spaces or punctuation
(what a fluent answer is made of), so that best/ is picked by a reward that varies."""

from __future__ import annotations

from typing import Callable

FLUENT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,!?'")


def create_reward_fn() -> Callable[..., list[float]]:
    def reward_fn(samples: list[str], prompts: list[str], outputs: list[str], **kwargs) -> list[float]:
        return [sum(c in FLUENT for c in o) / max(len(o), 1) for o in outputs]

    return reward_fn
