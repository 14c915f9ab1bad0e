"""Nothing unsafe is loaded, nothing secret is logged, nothing listens beyond this machine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import requests
import torch

from conftest import listeners_beyond_loopback, python_env, small_run, tiny_config, wait_for
from sft_core import ConfigError, train
from sft_core.launch import free_port


class RunsCode:
    """Unpickling this runs a shell command: what a tampered checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("state_file", ["optimizer.bin", "random_states_0.pkl"])
def test_a_tampered_checkpoint_cannot_run_code_on_resume(tmp_path, state_file):
    config = tiny_config(tmp_path, train=dict(total_steps=2, checkpoint_interval=2, eval_interval=100),
                         method=dict(metrics=[]))
    train(config=config)
    checkpoint = tmp_path / "checkpoints" / "step-2"
    marker = tmp_path / "CODE_RAN"
    torch.save({"state": RunsCode(marker)}, checkpoint / state_file)

    with pytest.raises(ConfigError) as raised:
        train(config=config.evolve(train=dict(total_steps=4, resume_from_checkpoint="latest")))
    assert "train.resume_from_checkpoint" in str(raised.value) and "step-2" in str(raised.value)
    assert not marker.exists(), "unpickling ran code"


def test_checkpoints_and_exports_hold_weights_as_safetensors_only(tmp_path):
    trainer = train(config=tiny_config(tmp_path, train=dict(total_steps=2, checkpoint_interval=2, eval_interval=100),
                                       method=dict(metrics=[])))
    trainer.save_pretrained(tmp_path / "export")
    weights = [p.name for p in (tmp_path / "checkpoints" / "step-2").iterdir() if p.name.startswith("model")]
    assert weights == ["model.safetensors"]
    assert {p.suffix for p in (tmp_path / "export").iterdir() if "model" in p.name and "config" not in p.name} == \
        {".safetensors"}


# -- secrets and listening addresses, against a real MLflow server ---------------------------------------
def healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` as the README's users start it (no --host), on a free port."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"], cwd=home,
                              env=python_env(), stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    wait_for(lambda: healthy(f"http://127.0.0.1:{port}/health"), 120, "the MLflow server", proc=server)
    yield {"port": port, "process": server}
    os.killpg(server.pid, 9)
    server.wait()


def test_the_mlflow_server_users_start_listens_on_loopback_only(mlflow_server):
    assert not listeners_beyond_loopback(mlflow_server["process"].pid)


SECRET = "s3cret-t0ken"


def test_credentials_in_the_tracking_uri_never_reach_params_artifacts_or_logs(mlflow_server, prefect_server,
                                                                               tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    from flows.sft import sft_pipeline

    monkeypatch.chdir(tmp_path)
    uri = f"http://alice:{SECRET}@127.0.0.1:{mlflow_server['port']}"
    params = small_run(tmp_path, tracking_uri=uri, total_steps=4, eval_interval=2)
    state = sft_pipeline(params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert SECRET not in result.model_dump_json()

    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["tracking.tracking_uri"].startswith("http://***@127.0.0.1")
    assert SECRET not in json.dumps([run.data.params, run.data.tags])
    local = Path(client.download_artifacts(result.mlflow_run_id, "", str(tmp_path / "artifacts")))
    texts = [p.read_text(errors="ignore") for p in local.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml",
                                                                                                    ".txt", ".md")]
    assert texts and not [t for t in texts if SECRET in t]
    assert SECRET not in (Path(result.run_dir) / "logs" / "params.json").read_text()

    flow_run_id = state.state_details.flow_run_id

    async def prefect_records():
        async with get_client() as prefect:
            artifacts = await prefect.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            logs = await prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return artifacts, logs

    artifacts, logs = asyncio.run(prefect_records())
    assert {a.key for a in artifacts} >= {"mlflow-run", "run-summary", "eval-samples", "training-progress"}
    assert not [a.key for a in artifacts if SECRET in json.dumps(a.model_dump(mode="json"))]
    assert logs and not [log.message for log in logs if SECRET in log.message]
