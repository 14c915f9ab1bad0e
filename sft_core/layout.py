"""Where a run's files live: every file and folder name sft_core writes, in one place.

A run folder (``runs/<run-name>/``) holds everything needed to inspect or resume the run:

    config.yaml          the validated config the run was started with
    checkpoints/step-N/  full checkpoints (weights, optimizer, scheduler, RNG, data position)
    checkpoints/best/    the best model by train.best_metric (a HuggingFace folder)
    logs/                metrics.jsonl, eval_samples.jsonl, params.json, summary.json, loss_curve.png
    model/               the exported HuggingFace model folder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# In train.logging_dir
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step: {"step": N, "time": t, name: value...}
EVAL_SAMPLES_FILE = "eval_samples.jsonl"  # generated eval samples, one per line, with their step
PARAMS_FILE = "params.json"  # the flattened config, credentials masked
SUMMARY_FILE = "summary.json"  # the TrainSummary, written when training ends
LOSS_CURVE_FILE = "loss_curve.png"

# In train.checkpoint_dir
CHECKPOINT_PREFIX = "step-"  # step-N/ holds the full state after optimizer step N
BEST_DIR = "best"
CHECKPOINT_CONFIG_FILE = "config.yaml"  # the config a checkpoint was written with


@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def launch_config(self) -> Path:
        return self.root / "train_config.yaml"  # what a launched child process trains with

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def model(self) -> Path:
        return self.root / "model"
