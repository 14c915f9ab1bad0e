"""Training curves as a PNG: the loss picture says more than a table of numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Left: train and held-out loss by step. Right: eval metrics by step. None if nothing to plot."""
    train = [(h["step"], h["train/loss"]) for h in history if "train/loss" in h]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h for h in history if any(k.startswith("metrics/") for k in h)]
    metric_names = sorted({k for h in evals for k in h if k.startswith("metrics/")})
    fig, axes = plt.subplots(1, 2 if metric_names else 1, figsize=(11 if metric_names else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(*zip(*train), label="train/loss", lw=1)
    held_out = [(h["step"], h["eval/loss"]) for h in history if "eval/loss" in h]
    if held_out:
        ax.plot(*zip(*held_out), "o-", label="eval/loss")
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", yscale="log", title="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if metric_names:
        ax = axes[0][1]
        for name in metric_names:
            points = [(h["step"], h[name]) for h in evals if name in h]
            ax.plot(*zip(*points), "o-", label=name.removeprefix("metrics/"))
        ax.set(xlabel="optimizer step", title="eval metrics (generated)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
