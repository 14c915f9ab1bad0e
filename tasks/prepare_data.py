"""Stage 2: load and tokenize the data once; cached across runs by the content of what decides it."""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from sft_core import run as sft_run
from tasks.artifacts import PreparedData, Run


def _data_key(context: Any, parameters: dict[str, Any]) -> str:
    """The engine's content key, per runs_dir (Prefect stores the result under this name)."""
    return "prepare-data-" + hashlib.sha256(str(parameters["run"].prepared_dir).encode()).hexdigest()[:24]


def _report_to(artifact: UUID):
    """The engine's progress (rows done, rows in all, seconds) as a Prefect progress artifact."""
    def report(done: int, total: int, seconds: float) -> None:
        rate = done / max(seconds, 1e-9)
        update_progress_artifact(artifact, 100 * done / max(total, 1),
                                 description=f"Tokenized {done:,} of {total:,} rows, {rate:,.0f} rows/s")
    return report


@task(name="prepare_data", cache_key_fn=_data_key, persist_result=True, result_serializer="json")
def prepare_data(run: Run) -> PreparedData:
    """Tokenized Arrow sets in ``<runs_dir>/.prepared/<key>``, shared by every run with the same inputs."""
    artifact = create_progress_artifact(0.0, key="prepare-data", description="Tokenizing the data")
    data = sft_run.prepare_data(run, on_progress=_report_to(artifact))
    update_progress_artifact(artifact, 100.0, description=f"Prepared {data.train_rows:,} training rows")
    get_run_logger().info("Prepared %s: %s", data.source, data.summary())
    return data
