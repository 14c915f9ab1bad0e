"""Nothing unsafe is loaded, and nothing secret is logged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import flow_run_artifacts, flow_run_logs, small_run, tiny_config
from sft_core import ConfigError, train


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


# -- secrets --------------------------------------------------------------------------------------------
SECRET = "s3cret-t0ken"


def test_credentials_in_a_tracking_uri_are_masked_in_mlflow_params(tmp_path):
    from sft_core.tracking import MLflowTracker

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(tiny_config(tmp_path, tracking=dict(tracking_uri=store)))
    tracker.log_params({"tracking.tracking_uri": f"https://alice:{SECRET}@mlflow.example.com",
                        "data.path": f"https://example.com/data.jsonl?token={SECRET}&split=train"})
    tracker.finish()
    params = mlflow.MlflowClient(store).get_run(tracker.run_id).data.params
    assert params == {"tracking.tracking_uri": "https://***@mlflow.example.com",
                      "data.path": "https://example.com/data.jsonl?token=***&split=train"}


def test_credentials_never_reach_params_artifacts_logs_or_the_result(prefect_server, tmp_path, monkeypatch):
    """A tracking URI with credentials (here of a server that is down) given as the flow's parameter."""
    from flows.sft import sft_pipeline

    monkeypatch.chdir(tmp_path)
    state = sft_pipeline(small_run(tmp_path, tracking_uri=f"http://alice:{SECRET}@127.0.0.1:9", total_steps=4,
                                   eval_interval=2), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result.tracking_uri == "http://***@127.0.0.1:9"
    assert SECRET not in result.model_dump_json()
    params = (Path(result.run_dir) / "logs" / "params.json").read_text()
    assert "http://***@127.0.0.1:9" in params and SECRET not in params

    flow_run_id = state.state_details.flow_run_id
    artifacts = flow_run_artifacts(flow_run_id)
    assert {a.key for a in artifacts} >= {"run-summary", "eval-samples", "training-progress"}
    assert not [a.key for a in artifacts if SECRET in json.dumps(a.model_dump(mode="json"))]
    masked = "http://***@127.0.0.1:9"
    logs = flow_run_logs(flow_run_id, ready=lambda logs: any(masked in log.message for log in logs))
    assert [log.message for log in logs if masked in log.message]  # the warning names the server
    assert not [log.message for log in logs if SECRET in log.message]
