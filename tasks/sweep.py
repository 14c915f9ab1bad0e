"""The sweep's stages around its child runs: open the sweep (check the grid, open the parent MLflow run),
then rank and report the points, then register the best one and send it through the promotion gate."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from sft_core.registry import logged_model_metrics
from sft_core.run import ExportedModel, load_run, register_exported
from sft_core.sweep import PointOutcome, Ranking, check_grid, grid_points, open_sweep_run, rank
from tasks.params import FLOW_RUN_TAG, PipelineConfig
from tasks.concurrency import TRAIN_LIMIT
from tasks.promotion import promotion_lock, publish_decision
from tasks.retries import unless_bad_input



class SweepPlan(BaseModel):
    name: str
    points: list[dict[str, Any]]
    tracking_uri: str
    parent_run_id: str | None
    concurrency_limit: str


@task(name="open-sweep", retries=2, retry_delay_seconds=2, retry_condition_fn=unless_bad_input)
def open_sweep(params: PipelineConfig, grid: dict[str, list[Any]], name: str) -> SweepPlan:
    """Refuse a bad grid or base config before any point starts; open the sweep's MLflow run (a retried
    flow run finds the one it opened). Every point holds the training concurrency limit (TRAIN_LIMIT unless
    the config names one), which training creates when missing."""
    config = params.to_sft_config()  # a bad base config fails here, once, rather than in every point
    points = grid_points(check_grid(grid))
    limit = params.concurrency_limit or TRAIN_LIMIT
    tracking_uri, run_id = open_sweep_run(config, name, grid, tags={FLOW_RUN_TAG: str(flow_run.get_id())},
                                          reuse_tag=FLOW_RUN_TAG)
    get_run_logger().info("Sweep %s: %d points over %s; MLflow run %s", name, len(points), ", ".join(grid), run_id)
    return SweepPlan(name=name, points=points, tracking_uri=tracking_uri, parent_run_id=run_id,
                     concurrency_limit=limit)


def point_params(params: PipelineConfig, plan: SweepPlan, index: int) -> PipelineConfig:
    """A point's pipeline parameters: the sweep's, plus the point's overrides, nested under the sweep's
    MLflow run, holding the training limit, and neither registering nor gating (the sweep does that once)."""
    overrides = {**params.overrides, **plan.points[index], "tracking.registered_model_name": None,
                 "tracking.parent_run_id": plan.parent_run_id}
    return params.model_copy(update=dict(
        overrides=overrides, registered_model_name=None, promotion_policy="never",
        run_name=f"{plan.name}-p{index + 1}", concurrency_limit=plan.concurrency_limit))


def completed_outcome(index: int, point: dict[str, Any], result: Any, flow_run_id: str | None,
                      tracking_uri: str) -> PointOutcome:
    """A finished point, scored by the metrics its exported model carries (those of the exported step)."""
    metrics = dict(result.final_metrics)
    if result.model_uri:
        metrics = logged_model_metrics(result.model_uri, tracking_uri=tracking_uri) or metrics
    return PointOutcome(index=index, point=point, status="completed", run_name=result.run_name,
                        run_dir=result.run_dir, model_dir=result.model_dir, model_uri=result.model_uri,
                        mlflow_run_id=result.mlflow_run_id, flow_run_id=flow_run_id, metrics=metrics)


@task(name="rank-points")
def rank_points(params: PipelineConfig, outcomes: list[PointOutcome]) -> Ranking:
    """Rank by the gate's metric and publish the table (failed points last, with their errors)."""
    config = params.to_sft_config()
    ranking = rank(outcomes, config.promotion, config.train.best_metric, config.train.best_mode)
    create_table_artifact(key="sweep-ranking", table=ranking_rows(ranking),
                          description=f"Sweep points ranked by {ranking.metric or '-'} ({ranking.mode or '-'} "
                                      "is better), each on its own eval set; failed points last.")
    logger = get_run_logger()
    for position, outcome in enumerate(ranking.points, 1):
        logger.info("#%d %s: %s", position, outcome.label,
                    outcome.error if outcome.status == "failed" else f"{ranking.metric}={outcome.score}")
    return ranking


def ranking_rows(ranking: Ranking) -> list[dict[str, Any]]:
    rows = []
    for position, outcome in enumerate(ranking.points, 1):
        rows.append({
            "rank": position if outcome.score is not None else "-", "point": outcome.label, "status": outcome.status,
            ranking.metric or "score": "-" if outcome.score is None else round(outcome.score, 6),
            "run": outcome.run_name or "-", "mlflow_run": outcome.mlflow_run_id or "-",
            "error": (outcome.error or "")[:300],
        })
    return rows


@task(name="register-best")
def register_best(params: PipelineConfig, best: PointOutcome, sweep_name: str) -> ExportedModel:
    """Register the best point's logged model and let the promotion gate decide on it, by the base
    config's promotion settings; publish the decision as the save stage does."""
    config = params.to_sft_config()
    name = config.tracking.registered_model_name
    tags = {"sftflow.sweep.name": sweep_name, "sftflow.sweep.point": best.label}
    if flow_run.id:
        tags["sftflow.sweep.flow_run_id"] = str(flow_run.id)
    exported = register_exported(load_run(best.run_dir), best.model_uri, best.model_dir, registered_name=name,
                                 alias=config.tracking.registered_model_alias, version_tags=tags,
                                 promotion=config.promotion, promotion_lock=lambda: promotion_lock(name))
    get_run_logger().info("Best point %s: registered %s v%s; promotion %s (%s)", best.label, name, exported.version,
                          exported.promotion.decision, exported.promotion.reason)
    publish_decision(exported.promotion)
    return exported
