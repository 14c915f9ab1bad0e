"""Sweeps as a flow: a Prefect test server, a sqlite MLflow store, real short training runs.

Each point of the grid is a child sft-pipeline flow run nested (in Prefect and in MLflow) under the
sweep; only the best point is registered and gated; a failed point is reported, and only a sweep whose
every point fails fails.
"""

from __future__ import annotations

import subprocess

import mlflow
import pytest

from conftest import PYTHON, flow_run_artifacts, python_env, settled, small_run
from flows.sweep import AllPointsFailed, sft_sweep
from sft_core.config import PromotionConfig
from sft_core.errors import ConfigError
from sft_core.sweep import PointOutcome, check_grid, grid_points, parse_grid_args, rank

# Points of a few seconds each: 6 steps, one eval at the end, a small demo set, short generations.
SHORT = {"data.num_demo_rows": 300, "data.max_eval_prompts": 8, "train.checkpoint_interval": 6,
         "method.gen_kwargs": {"max_new_tokens": 6, "do_sample": False}}


def sweep_params(tmp_path, name: str):
    return small_run(tmp_path, total_steps=6, eval_interval=6, registered_model_name=name, run_name=name,
                     overrides={**SHORT, "train.batch_size": 16})


def child_flow_runs(sweep_flow_run_id, count: int) -> list:
    """The sft-pipeline flow runs whose parent task run belongs to the sweep's flow run."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read(client):
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[sweep_flow_run_id])))
        flows = {f.id: f.name for f in await client.read_flows()}
        tasks = {r.parent_task_run_id: await client.read_task_run(r.parent_task_run_id) for r in runs}
        return [(r, flows[r.flow_id], tasks[r.parent_task_run_id]) for r in runs]
    return settled(read, lambda runs: len(runs) >= count)


def test_grid_arguments_points_and_ranking():
    grid = parse_grid_args(["optimizer.kwargs.lr=1e-3,3e-3", "train.seed=[1, 2]"])
    assert grid == {"optimizer.kwargs.lr": [0.001, 0.003], "train.seed": [1, 2]}
    assert grid_points(check_grid(grid)) == [
        {"optimizer.kwargs.lr": 0.001, "train.seed": 1}, {"optimizer.kwargs.lr": 0.001, "train.seed": 2},
        {"optimizer.kwargs.lr": 0.003, "train.seed": 1}, {"optimizer.kwargs.lr": 0.003, "train.seed": 2}]
    for bad, field in ((["train.batchsize=1,2"], "train.batchsize"), (["train.seed"], "train.seed"),
                       (["train.seed=1", "train.seed=2"], "train.seed")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            check_grid(parse_grid_args(bad))
    with pytest.raises(ConfigError, match="promotion.policy: set by the sweep"):
        check_grid({"promotion.policy": ["gate", "always"]})
    with pytest.raises(ConfigError, match="repeats a value"):
        check_grid({"train.seed": [1, 1]})

    def outcome(i, loss=None, exact=None, failed=False):
        metrics = {} if failed else {"eval/loss": loss, "metrics/exact_match": exact}
        return PointOutcome(index=i, point={"train.seed": i}, status="failed" if failed else "completed",
                            error="boom" if failed else None, metrics=metrics)
    points = [outcome(0, 2.0, 0.1), outcome(1, failed=True), outcome(2, 1.5, 0.0), outcome(3, 3.0, 0.5)]
    by_loss = rank(points, PromotionConfig(), None, None)  # the gate's default: eval/loss, lower is better
    assert (by_loss.metric, by_loss.mode) == ("eval/loss", "min")
    assert [o.index for o in by_loss.points] == [2, 0, 3, 1] and by_loss.best.index == 2
    by_exact = rank(points, PromotionConfig(metric="exact_match"), None, None)
    assert (by_exact.metric, by_exact.mode) == ("metrics/exact_match", "max")
    assert [o.index for o in by_exact.points] == [3, 0, 2, 1] and by_exact.points[-1].score is None


def test_a_failed_point_is_reported_and_only_the_best_is_registered_and_gated(prefect_server, tmp_path):
    """Two points: one trains, one has an impossible batch size. The sweep completes, ranks the good one
    first and the bad one as failed (with its error), and registers and gates only the good one."""
    state = sft_sweep({"optimizer.kwargs.lr": [0.003], "train.batch_size": [16, 0]},
                      sweep_params(tmp_path, "sweep-one-bad"), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    good, bad = result.ranking.points
    assert good.status == "completed" and good.point == {"optimizer.kwargs.lr": 0.003, "train.batch_size": 16}
    assert result.ranking.metric == "eval/loss" and good.score == good.metrics["eval/loss"]
    assert bad.status == "failed" and "train.batch_size" in bad.error and bad.score is None

    # Prefect: both points are child sft-pipeline flow runs, linked to the sweep through a task run of it.
    sweep_id = state.state_details.flow_run_id
    children = child_flow_runs(sweep_id, 2)
    assert sorted(run.name for run, _, _ in children) == ["sweep-one-bad-p1", "sweep-one-bad-p2"]
    assert {flow for _, flow, _ in children} == {"sft-pipeline"}
    assert all(task.flow_run_id == sweep_id for _, _, task in children)
    states = {run.name: run.state_type.value for run, _, _ in children}
    assert states == {"sweep-one-bad-p1": "COMPLETED", "sweep-one-bad-p2": "FAILED"}
    table = next(a for a in flow_run_artifacts(sweep_id, lambda arts: any(a.key == "sweep-ranking" for a in arts))
                 if a.key == "sweep-ranking")
    assert '"status": "failed"' in table.data and "train.batch_size=0" in table.data

    # MLflow: the trained point nested under the sweep's run; one registered version, gated once.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sftflow.sweep.best_run_id"] == good.mlflow_run_id
    nested = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'")
    assert [r.info.run_id for r in nested] == [good.mlflow_run_id]
    versions = client.search_model_versions("name = 'sweep-one-bad'")
    assert [str(v.version) for v in versions] == ["1"] and result.version == "1"
    tags = versions[0].tags
    assert tags["sftflow.promotion"] == "promoted" and tags["sftflow.sweep.point"] == good.label
    assert versions[0].run_id == good.mlflow_run_id and tags["sftflow.metrics_step"] == "6"
    assert tags["prefect.flow_run_id"] == good.flow_run_id  # the lineage of the child that trained it


def test_a_sweep_whose_every_point_fails_fails_listing_each_error(prefect_server, tmp_path):
    state = sft_sweep({"train.batch_size": [0, -1]}, sweep_params(tmp_path, "sweep-all-bad"), return_state=True)
    assert state.is_failed(), state
    with pytest.raises(AllPointsFailed) as failure:
        state.result()
    message = str(failure.value)
    assert "all 2 points" in message
    assert "- train.batch_size=0: " in message and "- train.batch_size=-1: " in message
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("sftflow").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("sweep-all-bad", "FAILED")]


@pytest.mark.extended  # ~7 s of CPU, nearly all of it importing torch & co. in a fresh interpreter
def test_the_command_refuses_a_grid_field_the_config_lacks(tmp_path):
    """python -m flows.sweep names the bad field and exits 2 before any run starts (a configured, unreachable
    server: the command must not need it to refuse its arguments)."""
    done = subprocess.run([PYTHON, "-m", "flows.sweep", "--grid", "optimizer.kwargs.lr=1e-3,3e-3",
                           "--grid", "train.batchsize=8,16"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=python_env(PREFECT_API_URL="http://127.0.0.1:9/api"))
    assert done.returncode == 2, done.stderr
    assert "train.batchsize: parameter train.batchsize is not present in the config" in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_bad_grid_fails_before_any_point_runs(prefect_server, tmp_path):
    state = sft_sweep({"train.batchsize": [1, 2]}, sweep_params(tmp_path, "sweep-typo"), return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="train.batchsize"):
        state.result()
    assert child_flow_runs(state.state_details.flow_run_id, 0) == []
    assert not (tmp_path / "runs").exists()


@pytest.mark.extended
def test_a_two_by_two_sweep(prefect_server, tmp_path):
    """4 points (lr x seed), 4 child flow runs, 4 nested MLflow runs, one ranking, one gate decision."""
    state = sft_sweep({"optimizer.kwargs.lr": [0.001, 0.003], "train.seed": [1, 2]},
                      sweep_params(tmp_path, "sweep-2x2"), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    ranking = result.ranking
    assert len(ranking.points) == 4 and all(o.status == "completed" for o in ranking.points)
    scores = [o.score for o in ranking.points]
    assert scores == sorted(scores)  # eval/loss: lower is better, best first
    assert len({o.run_name for o in ranking.points}) == 4

    children = child_flow_runs(state.state_details.flow_run_id, 4)
    assert len(children) == 4 and {flow for _, flow, _ in children} == {"sft-pipeline"}
    assert {run.state_type.value for run, _, _ in children} == {"COMPLETED"}

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(result.mlflow_run_id)
    nested = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'")
    assert sorted(r.info.run_id for r in nested) == sorted(o.mlflow_run_id for o in ranking.points)
    assert {r.data.params["optimizer.kwargs.lr"] for r in nested} == {"0.001", "0.003"}
    assert parent.data.metrics["best/eval/loss"] == ranking.points[0].score
    versions = client.search_model_versions("name = 'sweep-2x2'")
    assert len(versions) == 1 and versions[0].run_id == ranking.points[0].mlflow_run_id
    assert versions[0].tags["sftflow.promotion"] == "promoted"
    assert str(client.get_model_version_by_alias("sweep-2x2", "champion").version) == "1"
