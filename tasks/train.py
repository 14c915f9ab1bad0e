"""Stage 4: train, in this process or as a launched child process tree, and export the model."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from prefect import get_run_logger, task
from prefect.runtime import deployment

from sft_core.run import train_run
from tasks.artifacts import PreparedData, Run, TrainSummary
from tasks.concurrency import TRAIN_LIMIT, hold
from tasks.reporting import ThrottledLog, TrainingProgress, publish_eval_samples
from tasks.retries import unless_bad_input


@task(name="train", persist_result=True, result_serializer="json", retries=1, retry_delay_seconds=5,
      retry_condition_fn=unless_bad_input)
def train(run: Run, data: PreparedData, concurrency_limit: str | None = None) -> TrainSummary:
    """A retry resumes from the run's last checkpoint (train.resume_from_checkpoint=latest)."""
    logger = get_run_logger()
    with hold_train_limit(concurrency_limit, logger):
        summary = train_run(run, data, on_event=TrainingProgress(run.config.train.total_steps, logger),
                            on_line=ThrottledLog(logger))
    publish_eval_samples(run.layout.logs)
    return summary


def train_limit(named: str | None) -> str | None:
    """The limit a run holds while training: the one named, else ``sft-train`` for a deployment's run (a worker
    or ``serve`` may start several on one machine), else none (a local run, ``python -m flows.sft`` or a test,
    holds nothing unless it names a limit)."""
    if named:
        return named
    return TRAIN_LIMIT if deployment.id else None


@contextlib.contextmanager
def hold_train_limit(named: str | None, logger: logging.LoggerAdapter) -> Iterator[None]:
    limit = train_limit(named)
    if not limit:
        yield
        return
    logger.info("Training takes a slot of the global concurrency limit %r (waits while it is full)", limit)
    with hold(limit, logger, survive_lost_lease=True):
        yield
