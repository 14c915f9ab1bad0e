"""Stage 2: load and tokenize the data once; cached across runs by the content of what decides it."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import get_run_logger, task

from sft_core import run as sft_run
from tasks.artifacts import PreparedData, Run


def _data_key(context: Any, parameters: dict[str, Any]) -> str:
    """The engine's content key, per runs_dir (Prefect stores the result under this name)."""
    return "prepare-data-" + hashlib.sha256(str(parameters["run"].prepared_dir).encode()).hexdigest()[:24]


@task(name="prepare_data", cache_key_fn=_data_key, persist_result=True, result_serializer="json")
def prepare_data(run: Run) -> PreparedData:
    """Tokenized Arrow sets in ``<runs_dir>/.prepared/<key>``, shared by every run with the same inputs."""
    data = sft_run.prepare_data(run)
    get_run_logger().info("Prepared %s: %s", data.source, data.summary())
    return data
