"""`prefect deploy` + `prefect worker start` on a process work pool, as the README and deployments/prefect.yaml
write them, against a real `prefect server start`: deployed from one folder (deleted before the run), run by a
worker whose checkout is in another folder, to Completed, and the deployments on the server hold no path of the
deploying machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import ROOT, api_healthy, prefect_home_env, wait_for
from sft_core.launch import free_port, kill_tree

pytestmark = pytest.mark.extended
BIN = Path(sys.executable).parent
SMALL = {"total_steps": 20, "eval_interval": 10, "run_name": "on-a-worker",
         "overrides": {"data.num_demo_rows": 600, "data.max_eval_prompts": 16, "train.batch_size": 16}}
# The commands of the README's worker path, run as written (the venv's bin/ first on PATH, as when it is active).
CREATE_POOL = "prefect work-pool create sft-process --type process"
DEPLOY = "prefect deploy --prefect-file deployments/prefect.yaml --all"
WORKER = "prefect worker start --pool sft-process"


def copy_checkout(dest: Path) -> Path:
    """The checkout's code as a working tree holds it (tracked and new files), as a clone elsewhere would."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                             "flows", "tasks", "sft_core", "deployments", "configs", "pyproject.toml"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def machine_env(home: Path, api: str, checkout: Path) -> dict[str, str]:
    """A machine whose Python imports sftflow from ``checkout`` (there: its own `pip install -e .`)."""
    env = prefect_home_env(home, PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                           PYTHONPATH=str(checkout), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for name in ("MLFLOW_TRACKING_URI", "SFTFLOW_ROOT"):
        env.pop(name, None)  # the run's default store is then mlflow.db in the folder it works in
    return env


def test_deploy_from_one_folder_and_run_on_a_worker_with_its_checkout_elsewhere(tmp_path):
    header = (ROOT / "deployments" / "prefect.yaml").read_text()
    assert all(command in header for command in (CREATE_POOL, DEPLOY, WORKER)), "prefect.yaml's header drifted"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    deploying = copy_checkout(tmp_path / "deploying-machine" / "sftflow")
    worker_checkout = copy_checkout(tmp_path / "worker-machine" / "src" / "sftflow")
    server_env = prefect_home_env(tmp_path / "server-home", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=server_env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker = None
    try:
        wait_for(lambda: api_healthy(api), 120, "the Prefect server", proc=server)
        deploy_env = machine_env(tmp_path / "deploying-machine" / "prefect", api, deploying)
        for command in (CREATE_POOL, DEPLOY):
            done = subprocess.run(shlex.split(command), cwd=deploying, env=deploy_env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        shutil.rmtree(deploying)  # nothing of the deploying machine's folder may be needed from here on

        worker = subprocess.Popen(shlex.split(WORKER), cwd=worker_checkout,
                                  env=machine_env(tmp_path / "worker-machine" / "prefect", api, worker_checkout),
                                  stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        adhoc = _api(api, "GET", "/deployments/name/sft-pipeline/sft-adhoc")
        flow_run = _api(api, "POST", f"/deployments/{adhoc['id']}/create_flow_run",
                        {"parameters": {"config": SMALL}})
        done = wait_for(lambda: _final(api, flow_run["id"]), 600, "the flow run on the worker", proc=worker, every_s=2)
        assert done["state"]["type"] == "COMPLETED", (done["state"], (tmp_path / "worker.log").read_text()[-3000:])

        # The run worked in the worker's checkout: its relative runs/ and default mlflow.db are there.
        assert (worker_checkout / "runs" / "on-a-worker" / "model" / "model.safetensors").is_file()
        assert (worker_checkout / "mlflow.db").is_file()
        # A deployment's run holds the training limit: created when missing, limit 1.
        assert _api(api, "GET", "/v2/concurrency_limits/sft-train")["limit"] == 1
        stored = json.dumps(_api(api, "POST", "/deployments/filter", {}))
        assert str(deploying) not in stored and str(ROOT) not in stored, stored
        assert '"pull_steps": [{"deployments.checkout.enter_checkout": {}}]' in stored
    finally:
        for proc in (worker, server):
            if proc is not None:
                kill_tree(proc.pid)


def _api(api: str, method: str, path: str, body: dict | None = None):
    response = requests.request(method, api + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _final(api: str, flow_run_id: str):
    run = _api(api, "GET", f"/flow_runs/{flow_run_id}")
    return run if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
