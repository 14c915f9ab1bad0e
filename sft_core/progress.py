"""What the loop reports each optimizer step: a progress bar, and every `log_interval` steps a metrics row.

The trainer makes one call per step; this module owns the bar (tqdm), the throughput window and
the log-interval check, so none of that bookkeeping sits in the loop.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm


class StepLog:
    """Accumulates per-step numbers between log lines; logs token-weighted loss and throughput.

    Every rank computes the same metrics (the caller decides who tracks them); the bar shows only on
    the local main process.
    """

    def __init__(self, *, total_steps: int, initial_step: int, log_interval: int, show_bar: bool):
        self.total_steps = total_steps
        self.log_interval = log_interval
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True,
                        disable=not show_bar)
        self.t_start = time.perf_counter()
        self._reset_window()

    def _reset_window(self) -> None:
        self.loss_x_targets = 0.0  # sum of step loss x step target tokens, so the logged loss is per target token
        self.targets = 0
        self.tokens = 0  # tokens of the rows (prompt and target, padding excluded), all ranks
        self.t_window = time.perf_counter()

    def step(self, step: int, loss: float, n_targets: int, n_tokens: int, *, lr: float, grad_norm: float | None,
             epoch: float) -> dict[str, float] | None:
        """Count optimizer step ``step``; the metrics row when it is a log step (or the last one), else None."""
        self.loss_x_targets += loss * n_targets
        self.targets += n_targets
        self.tokens += n_tokens
        self.bar.update(1)
        if step % self.log_interval != 0 and step != self.total_steps:
            return None
        seconds = max(time.perf_counter() - self.t_window, 1e-9)
        metrics = {
            "train/loss": self.loss_x_targets / max(self.targets, 1),
            "train/lr": lr,
            "train/tokens_per_s": self.tokens / seconds,
            "train/target_tokens_per_s": self.targets / seconds,
            "train/epoch": epoch,  # fractional: epochs done when this step's last batch started
        }
        if grad_norm is not None:
            metrics["train/grad_norm"] = grad_norm
        self._reset_window()
        self.bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        return metrics

    def close(self) -> float:
        """Close the bar; the seconds since this log was created (the run's training time)."""
        self.bar.close()
        return time.perf_counter() - self.t_start


def show(line: str) -> None:
    """Print a line above the progress bar without breaking it."""
    tqdm.write(line)
