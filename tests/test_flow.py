"""The Prefect pipeline against real components: a Prefect test server, a sqlite MLflow store, real training."""

from __future__ import annotations

import asyncio

import mlflow
import mlflow.transformers
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.sft import sft_pipeline
from tasks.params import PipelineConfig

STAGES = ["configure", "prepare_data", "define_metrics", "train", "save"]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness(server_startup_timeout=120):
        yield


def small_run(tmp_path, **changes) -> PipelineConfig:
    base = dict(
        total_steps=20, eval_interval=10, runs_dir=str(tmp_path / "runs"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", registered_model_name="sft-test",
        overrides={"data.num_demo_rows": 600, "data.max_eval_prompts": 16, "train.batch_size": 16,
                   "train.checkpoint_interval": 10},
    )
    return PipelineConfig(**{**base, **changes})


def task_runs(flow_run_id):
    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return sorted(runs, key=lambda r: r.expected_start_time)
    return asyncio.run(read())


def test_pipeline_runs_five_stages_and_registers_a_model(prefect_server, tmp_path):
    params = small_run(tmp_path)
    state = sft_pipeline(params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    runs = task_runs(state.state_details.flow_run_id)
    assert [r.task_key.split("-")[0] for r in runs] == STAGES
    assert all(r.state.is_completed() for r in runs)

    client = mlflow.MlflowClient(params.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == result.run_name
    assert run.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert run.data.params["train.total_steps"] == "20"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [10, 20]  # train.log_interval = 10
    assert {"eval/loss", "metrics/exact_match", "train/tokens_per_s", "train/lr"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval_samples", "loss_curve.png"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "eval_samples")
    assert run.inputs.dataset_inputs, "the training set is recorded through mlflow.data"

    mlflow.set_tracking_uri(params.tracking_uri)
    pipe = mlflow.transformers.load_model("models:/sft-test@candidate")
    out = pipe("add 1 2\n", max_new_tokens=4, min_new_tokens=2, do_sample=False)[0]["generated_text"]
    assert out.startswith("add 1 2\n") and len(out) > len("add 1 2\n")
    assert result.version == "1" and result.registered_name == "sft-test"


def test_rerun_with_new_learning_rate_hits_the_data_cache(prefect_server, tmp_path):
    first = sft_pipeline(small_run(tmp_path, learning_rate=0.003, registered_model_name=None), return_state=True)
    second = sft_pipeline(small_run(tmp_path, learning_rate=0.001, registered_model_name=None), return_state=True)
    assert first.is_completed() and second.is_completed()
    by_stage = {r.task_key.split("-")[0]: r.state for r in task_runs(second.state_details.flow_run_id)}
    assert by_stage["prepare_data"].name == "Cached"
    assert by_stage["train"].name == "Completed"  # training itself is never cached
    assert first.result().run_dir != second.result().run_dir
