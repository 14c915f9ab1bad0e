"""The Prefect pipeline against real components: a Prefect test server, a sqlite MLflow store, real training."""

from __future__ import annotations

import mlflow
import mlflow.transformers

from conftest import small_run, task_runs
from flows.sft import sft_pipeline


def test_pipeline_runs_five_stages_and_registers_a_model(prefect_server, tmp_path):
    params = small_run(tmp_path)
    state = sft_pipeline(params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    runs = task_runs(state.state_details.flow_run_id)
    assert [r.task_key.split("-")[0] for r in runs] == ["configure", "prepare_data", "define_metrics", "train", "save"]
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
