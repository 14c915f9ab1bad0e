"""Stage 4: train, in this process or as a launched child process tree, and export the final model."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from datasets import load_from_disk
from prefect import get_run_logger, task

from sft_core.api import train as sft_train
from sft_core.errors import SFTError
from sft_core.launch import ChildFailed, launch_command, run_child
from sft_core.tracking import log_input_dataset
from sft_core.trainer import SUMMARY_FILE
from tasks.artifacts import MetricSuite, PreparedData, RunConfig, TrainResult
from tasks.reporting import TrainingProgress, publish_eval_samples

BAD_INPUT_EXIT_CODE = 2  # sft_core's CLI exit code for SFTError


def retry_unless_bad_input(task, task_run, state) -> bool:
    """A crash or a lost worker is worth one retry (it resumes from the last checkpoint); bad input is not."""
    try:
        state.result()
    except SFTError:
        return False
    except ChildFailed as err:
        return f"exited with code {BAD_INPUT_EXIT_CODE}" not in str(err).splitlines()[0]
    except Exception:  # noqa: BLE001
        return True
    return False


@task(name="train", persist_result=True, result_serializer="json", retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_unless_bad_input)
def train(run: RunConfig, data: PreparedData, metrics: MetricSuite) -> TrainResult:
    """A retry resumes from the run's last checkpoint (train.resume_from_checkpoint=latest)."""
    logger = get_run_logger()
    config = run.config.evolve(data=dict(path=data.path), method=dict(metrics=metrics.metrics))
    run_dir, logs = Path(run.run_dir), Path(config.train.logging_dir)
    model_dir = run_dir / "model"
    progress = TrainingProgress(config.train.total_steps, logs / "metrics.jsonl")
    if run.mlflow_run_id:
        _log_training_set(run, data)
    with hold_concurrency(run.concurrency_limit):
        if run.launch == "in_process":
            trainer = sft_train(config=config, callbacks=[progress.on_event, _log_evals(logger)])
            trainer.save_pretrained(model_dir)
        else:
            config_path = config.save_yaml(run_dir / "train_config.yaml")
            cmd, env = launch_command(config_path, config.distributed, output_dir=model_dir,
                                      gpu_available=torch.cuda.is_available())
            logger.info("Launching: %s", " ".join(cmd))
            run_child(cmd, env=env, cwd=run_dir, on_line=_ThrottledLog(logger), on_tick=progress.poll,
                      timeout_s=run.train_timeout_s)
    publish_eval_samples(logs)
    summary = json.loads((logs / SUMMARY_FILE).read_text())
    return TrainResult(model_dir=str(model_dir), **{k: v for k, v in summary.items() if k in TrainResult.model_fields
                                                    and k != "model_dir"})


def _log_training_set(run: RunConfig, data: PreparedData) -> None:
    try:
        dataset = load_from_disk(str(Path(data.path) / "train"))
        log_input_dataset(run.tracking_uri, run.mlflow_run_id, dataset, source=data.source,
                          name=f"{Path(data.source).name}-tokenized")
    except Exception as err:  # noqa: BLE001 - bookkeeping must not stop training
        get_run_logger().warning("Could not log the training set to MLflow: %s", err)


@contextlib.contextmanager
def hold_concurrency(limit: str | None) -> Iterator[None]:
    """Hold one slot of a Prefect global concurrency limit (e.g. 'gpu', limit 1) while training."""
    if not limit:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit, occupy=1, strict=True):
        yield


def _log_evals(logger):
    def callback(event: str, payload: dict[str, Any]) -> None:
        if event == "eval":
            shown = ", ".join(f"{k}={v:.4f}" for k, v in payload["metrics"].items())
            logger.info("eval at step %d: %s", payload["step"], shown)
    return callback


class _ThrottledLog:
    """Child output into the run log; tqdm's redraws at most every 10 s, everything else as it comes."""

    def __init__(self, logger, every_s: float = 10.0):
        self.logger, self.every_s, self._last = logger, every_s, 0.0

    def __call__(self, line: str) -> None:
        if "it/s" in line or "s/it" in line:
            now = time.monotonic()
            if now - self._last < self.every_s:
                return
            self._last = now
        self.logger.info(line)
