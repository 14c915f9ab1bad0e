"""Shared fixtures. Everything here is real: real tokenizers, models, Accelerate, files on disk."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

# Before any test module imports datasets/huggingface_hub, which read these once at import.
# There is no network here: without them every hub lookup retries for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need CUDA: where there is none they are skipped, saying why (not failed)."""
    needs_gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not needs_gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` there, or scripts/gpu_check.sh)")
    for item in needs_gpu:
        item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """The tokenized-data cache in a temp folder, so tests never see a previous run's cache."""
    os.environ["SFTFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A Prefect test server for every in-process flow run (Prefect's own harness; a real API server),
    started once: it takes ~20 s."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_config(run_dir: Path, **sections):
    """The embedded demo, cut down to seconds, writing under run_dir."""
    from sft_core import default_sft_config

    base = dict(
        train=dict(total_steps=20, eval_interval=10, checkpoint_interval=10, log_interval=1, batch_size=16,
                   checkpoint_dir=str(run_dir / "checkpoints"), logging_dir=str(run_dir / "logs")),
        data=dict(num_demo_rows=600, max_eval_prompts=16, cache_dir=str(run_dir / "data-cache")),
        scheduler=dict(warmup_steps=2),
    )
    config = default_sft_config().evolve(**base)
    return config.evolve(**sections) if sections else config


def python_env(**extra: str) -> dict[str, str]:
    """Environment for child processes that import the project from the checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


PYTHON = sys.executable


def wait_for(predicate, timeout_s: float, what: str, *, proc=None, every_s: float = 0.5):
    """Poll until predicate() is truthy and return its value; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def listeners_beyond_loopback(pid: int) -> list[str]:
    """Addresses the process tree of ``pid`` listens on other than 127.0.0.1 / ::1."""
    import psutil

    tree = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    return [f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections("inet")
            if c.pid in tree and c.status == psutil.CONN_LISTEN and c.laddr.ip not in ("127.0.0.1", "::1")]


def small_run(tmp_path, **changes):
    """Pipeline parameters for a seconds-long run on the embedded demo, with its own runs/ and MLflow store."""
    from tasks.params import PipelineConfig

    base = dict(
        total_steps=20, eval_interval=10, runs_dir=str(tmp_path / "runs"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", registered_model_name="sft-test",
        overrides={"data.num_demo_rows": 600, "data.max_eval_prompts": 16, "train.batch_size": 16,
                   "train.checkpoint_interval": 10},
    )
    return PipelineConfig(**{**base, **changes})


def api_healthy(api: str) -> bool:
    """Whether a Prefect server answers at ``api`` (``http://host:port/api``)."""
    import requests

    try:
        return requests.get(f"{api}/health", timeout=2).ok
    except requests.RequestException:
        return False


def prefect_home_env(home: Path, **extra: str) -> dict[str, str]:
    """python_env() for a child whose Prefect settings come from ``home`` (its profiles.toml), its cwd's
    prefect.toml and ``extra`` only: none of this session's PREFECT_API_URL or profile."""
    env = python_env(PREFECT_HOME=str(home))
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        env.pop(name, None)
    return {**env, **extra}


# -- what a flow run left on the Prefect server ----------------------------------------------------------
def settled(read, ready, timeout_s: float = 30.0):
    """``asyncio.run(read(client))`` once ``ready(value)`` holds, or the last value at the deadline (the
    caller's asserts then say what is missing).

    A flow run's records reach the server after the flow returns: this process's Prefect workers send
    logs and events (task-run states among them) in batches in the background, and the server records
    task runs from those events on its own schedule. So first send what this process still holds
    (APILogHandler.flush is Prefect's documented flush; its test harness drains events the same way),
    then poll."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=timeout_s)

    async def read_once():
        async with get_client() as client:
            return await read(client)

    deadline = time.monotonic() + timeout_s
    while True:
        value = asyncio.run(read_once())
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def flow_run_logs(flow_run_id, ready=lambda logs: True) -> list:
    """All the flow run's logs (every page), oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read(client):
        logs, page = [], 200
        while batch := await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                              limit=page, offset=len(logs)):
            logs += batch
            if len(batch) < page:
                break
        return logs
    return settled(read, ready)


def flow_run_artifacts(flow_run_id, ready=lambda artifacts: True) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read(client):
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return settled(read, ready)


def task_runs(flow_run_id):
    """The flow run's task runs, in the order they started, once all are in a final state and two reads agree."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read(client):
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return sorted(runs, key=lambda r: r.expected_start_time)

    seen = []

    def ready(runs) -> bool:
        states = [(r.id, r.state_type) for r in runs]
        stable, seen[:] = states == seen, states
        return bool(runs) and stable and all(r.state is not None and r.state.is_final() for r in runs)
    return settled(read, ready)
