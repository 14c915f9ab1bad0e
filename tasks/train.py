"""Stage 4: train, in this process or as a launched child process tree, and export the model."""

from __future__ import annotations

import contextlib
from typing import Iterator

from prefect import get_run_logger, task

from sft_core.run import train_run
from tasks.artifacts import PreparedData, Run, TrainSummary
from tasks.reporting import ThrottledLog, TrainingProgress, publish_eval_samples
from tasks.retries import unless_bad_input


@task(name="train", persist_result=True, result_serializer="json", retries=1, retry_delay_seconds=5,
      retry_condition_fn=unless_bad_input)
def train(run: Run, data: PreparedData, concurrency_limit: str | None = None) -> TrainSummary:
    """A retry resumes from the run's last checkpoint (train.resume_from_checkpoint=latest)."""
    logger = get_run_logger()
    with hold_concurrency(concurrency_limit):
        summary = train_run(run, data, on_event=TrainingProgress(run.config.train.total_steps, logger),
                            on_line=ThrottledLog(logger))
    publish_eval_samples(run.layout.logs)
    return summary


@contextlib.contextmanager
def hold_concurrency(limit: str | None) -> Iterator[None]:
    """Hold one slot of a Prefect global concurrency limit (e.g. 'gpu', limit 1) while training."""
    if not limit:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit, occupy=1, strict=True):
        yield
