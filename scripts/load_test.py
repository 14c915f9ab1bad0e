"""Load: ten flow runs submitted at once to one Prefect server, with a global concurrency limit of 1 on training.

    python scripts/load_test.py            # ~3-5 min on 2 CPU cores; CI runs it after the tests

Starts a real `prefect server start` on a free localhost port and `python -m deployments.serve --limit 10`,
creates the concurrency limit, triggers the ad-hoc deployment ten times through the API, and checks:
every run completes; no two `train` task runs overlap in time; each run has its own MLflow run and its
own registered model version. Exits non-zero (and says why) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.concurrency import TRAIN_LIMIT

ROOT = Path(__file__).resolve().parents[1]
LIMIT_NAME = TRAIN_LIMIT  # the pipeline's training limit, held by deployment runs
MODEL_NAME = "sft-load"


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(1)


def run_parameters(home: Path, i: int) -> dict:
    return {"config": {
        "run_name": f"load-{i:02d}", "total_steps": 20, "eval_interval": 20, "concurrency_limit": LIMIT_NAME,
        "runs_dir": str(home / "runs"), "tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
        "registered_model_name": MODEL_NAME,
        "overrides": {"data.num_demo_rows": 600, "data.max_eval_prompts": 16, "train.batch_size": 16},
    }}


async def api(coro_fn):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await coro_fn(client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout-minutes", type=float, default=20)
    args = parser.parse_args()

    from sft_core.launch import free_port

    home = Path(tempfile.mkdtemp(prefix="sft-load-"))
    port = free_port()
    os.environ.update(PREFECT_HOME=str(home / "prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      SFTFLOW_CACHE=str(home / "cache"))
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                       str(port)], stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
        wait_for(lambda: _healthy(port), 120, "the Prefect server")
        subprocess.run([str(bin_dir / "prefect"), "gcl", "create", LIMIT_NAME, "--limit", "1"], check=True,
                       capture_output=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "deployments.serve", "--limit", str(args.runs)], cwd=home,
                                      stdout=open(home / "serve.log", "w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
        wait_for(lambda: "sft-adhoc" in {d.name for d in asyncio.run(api(lambda c: c.read_deployments()))}, 120,
                 "the sft-adhoc deployment")  # serve registers others beside it (retrain, watch-data, sweep)

        started = time.monotonic()

        async def submit(client):
            deployment = await client.read_deployment_by_name("sft-pipeline/sft-adhoc")
            return [await client.create_flow_run_from_deployment(deployment.id, parameters=run_parameters(home, i))
                    for i in range(args.runs)]

        flow_run_ids = [r.id for r in asyncio.run(api(submit))]
        print(f"submitted {len(flow_run_ids)} flow runs; serving {args.runs} at once, training limited to 1")

        def all_final() -> bool:
            runs = asyncio.run(api(lambda c: asyncio.gather(*(c.read_flow_run(i) for i in flow_run_ids))))
            return all(r.state.is_final() for r in runs)

        wait_for(all_final, args.timeout_minutes * 60, "all flow runs to finish")
        elapsed = time.monotonic() - started
        return check(home, flow_run_ids, elapsed)
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)


def check(home: Path, flow_run_ids: list, elapsed: float) -> int:
    import mlflow
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read(client):
        runs = await asyncio.gather(*(client.read_flow_run(i) for i in flow_run_ids))
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
        return runs, tasks

    runs, task_runs = asyncio.run(api(read))
    failures = []
    states = [r.state.name for r in runs]
    if states.count("Completed") != len(runs):
        failures.append(f"not all runs completed: {states}")
    # A train task run starts before it holds the slot; the training itself is what metrics.jsonl spans.
    trainings = sorted(training_window(home / "runs" / f"load-{i:02d}") + (i,) for i in range(len(runs)))
    overlaps = [(a[2], b[2]) for a, b in zip(trainings, trainings[1:]) if b[0] < a[1]]
    finished_trains = [t for t in task_runs if t.task_key.startswith("train") and t.state and t.state.is_completed()]
    if len(finished_trains) != len(runs):
        failures.append(f"{len(finished_trains)} completed train task runs for {len(runs)} flow runs")
    if overlaps:
        failures.append(f"trainings of runs overlapped (concurrency limit not held): {overlaps}")

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sftflow")
    mlflow_runs = client.search_runs([experiment.experiment_id]) if experiment else []
    finished = [r for r in mlflow_runs if r.info.status == "FINISHED"]
    flow_tags = {r.data.tags.get("prefect.flow_run_id") for r in finished}
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'"))
    if len(finished) != len(runs) or flow_tags != {str(i) for i in flow_run_ids}:
        failures.append(f"{len(finished)} finished MLflow runs for {len(runs)} flow runs")
    if versions != list(range(1, len(runs) + 1)):
        failures.append(f"model versions {versions}, expected 1..{len(runs)}")

    busy = sum(end - start for start, end, _ in trainings)
    print(f"{len(runs)} runs in {elapsed:.0f} s: {states.count('Completed')} completed; "
          f"{len(trainings)} trainings, one at a time ({busy:.0f} s of training, no overlap: {not overlaps}); "
          f"{len(finished)} MLflow runs; model versions {versions}")
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        print(f"logs: {home}")
    return 1 if failures else 0


def training_window(run_dir: Path) -> tuple[float, float]:
    """(first, last) timestamp the trainer wrote to the run's metrics.jsonl."""
    times = [json.loads(line)["time"] for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
    return min(times), max(times)


def _healthy(port: int) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/api/health", timeout=2).ok
    except requests.RequestException:
        return False


if __name__ == "__main__":
    sys.exit(main())
