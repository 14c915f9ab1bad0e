"""Sweeps over config fields, the engine's half: the grid, its points, and their ranking.

trlX's ``trlx.sweep`` hands a grid to Ray Tune. Here a grid is a dict of dotted config fields to value
lists; every combination is one point, trained as its own run (the Prefect flow ``sft-sweep`` runs each
as a child ``sft-pipeline`` run), ranked by the promotion gate's metric, and only the best point is
registered and sent through the gate (``sft_core.run.register_exported``).

    grid = parse_grid_args(["optimizer.kwargs.lr=1e-3,3e-3", "train.seed=1,2"])
    points = grid_points(check_grid(grid))   # 4 dicts of dotted overrides
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from sft_core.config import PromotionConfig, TRLConfig
from sft_core.config_io import load_yaml_text
from sft_core.errors import ConfigError
from sft_core.promotion import gate_metric, gate_mode
from sft_core.trlx_fields import unknown_hparam

# Fields the sweep sets on every point itself: a point must not register, gate, or leave the sweep's store.
SWEEP_OWNED = ("tracking.registered_model_name", "tracking.registered_model_alias", "tracking.run_id",
               "tracking.parent_run_id", "tracking.tracking_uri", "tracking.experiment_name", "promotion")


def parse_grid_args(items: list[str]) -> dict[str, list[Any]]:
    """``["optimizer.kwargs.lr=1e-3,3e-3", "train.seed=[1, 2]"]`` -> ``{"optimizer.kwargs.lr": [0.001, 0.003], ...}``.
    Values are YAML scalars split at commas, or one YAML list (for values that hold commas themselves)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(item, "expected --grid SECTION.FIELD=VALUE1,VALUE2,...")
        if key in grid:
            raise ConfigError(key, "given twice in the grid; list all its values in one --grid")
        parsed = load_yaml_text(raw) if raw.strip().startswith("[") else None
        grid[key] = parsed if isinstance(parsed, list) else [load_yaml_text(v.strip()) for v in raw.split(",")]
    return grid


def check_grid(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The grid, if every key names a config field the sweep may vary and every value list is non-empty
    and free of repeats; else a ConfigError naming the key. (Values are checked by each point's own run.)"""
    if not grid:
        raise ConfigError("grid", "empty: give at least one field and its values, e.g. optimizer.kwargs.lr=1e-3,3e-3")
    for key, values in grid.items():
        problem = unknown_hparam(TRLConfig, key)
        if problem:
            raise ConfigError(key, problem)
        if any(key == owned or key.startswith(owned + ".") for owned in SWEEP_OWNED):
            raise ConfigError(key, "set by the sweep itself (points log under the sweep's MLflow run and are not "
                                   "registered; only the best one is, and the base config's promotion settings gate it)")
        if not isinstance(values, list) or not values:
            raise ConfigError(key, f"needs a non-empty list of values (got {values!r})")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(key, f"repeats a value ({values!r}): the points would be the same run")
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first key varying slowest: a point is a dict of dotted overrides."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_label(point: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in point.items())


class PointOutcome(BaseModel):
    """One point's run: its overrides, how it ended, and what it scored (its exported model's metrics)."""

    index: int
    point: dict[str, Any]
    status: Literal["completed", "failed"]
    error: str | None = None
    run_name: str | None = None
    run_dir: str | None = None
    model_dir: str | None = None
    model_uri: str | None = None  # models:/m-... (logged, not registered)
    mlflow_run_id: str | None = None
    flow_run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    score: float | None = None  # the ranking metric's value

    @property
    def label(self) -> str:
        return point_label(self.point)


class Ranking(BaseModel):
    """The points, best first; failed points (and ones without the metric) last, in grid order."""

    metric: str | None
    mode: Literal["max", "min"] | None
    points: list[PointOutcome]

    @property
    def best(self) -> PointOutcome | None:
        top = self.points[0] if self.points else None
        return top if top is not None and top.score is not None else None


def rank(outcomes: list[PointOutcome], promotion: PromotionConfig, best_metric: str | None,
         best_mode: str | None) -> Ranking:
    """Order the points by the metric the promotion gate will judge the winner on (``gate_metric`` and
    ``gate_mode``, from promotion.metric/mode or train.best_metric/best_mode), on each point's own eval set."""
    scored = [o for o in outcomes if o.status == "completed" and o.metrics]
    if not scored:
        return Ranking(metric=None, mode=None, points=list(outcomes))
    metric = gate_metric(promotion, best_metric, scored[0].metrics)
    mode = gate_mode(promotion, best_mode, metric)
    ranked: list[PointOutcome] = []
    for outcome in outcomes:
        value = outcome.metrics.get(metric) if outcome.status == "completed" else None
        usable = value is not None and math.isfinite(value)
        ranked.append(outcome.model_copy(update=dict(score=value if usable else None)))
    sign = -1.0 if mode == "max" else 1.0
    ranked.sort(key=lambda o: (o.score is None, sign * o.score if o.score is not None else 0.0, o.index))
    return Ranking(metric=metric, mode=mode, points=ranked)


# -- the sweep's MLflow run: the parent its points' runs nest under ------------------------------------------
def open_sweep_run(config: TRLConfig, name: str, grid: dict[str, list[Any]], *, tags: dict[str, str] | None = None,
                   reuse_tag: str | None = None) -> tuple[str, str | None]:
    """(tracking URI, run id) of the sweep's own MLflow run, in the base config's store and experiment,
    with the grid as params. The run id is None when MLflow is unreachable (the points then log alone)."""
    import json

    import mlflow

    from sft_core.run import open_mlflow_run
    from sft_core.tracking import resolve_tracking_uri
    from sft_core.trlx_fields import resolve_tracking

    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    tracking = resolve_tracking(config)
    run_id = open_mlflow_run(tracking_uri, tracking.experiment_name, name,
                             {**tracking.tags, **(tags or {}), "sftflow.sweep": "true"}, reuse_tag=reuse_tag)
    if run_id:
        client = mlflow.MlflowClient(tracking_uri)
        for key, values in grid.items():
            client.log_param(run_id, f"grid.{key}", json.dumps(values)[:6000])
        client.log_param(run_id, "grid.points", len(grid_points(grid)))
    return tracking_uri, run_id


def close_sweep_run(tracking_uri: str, run_id: str | None, ranking: Ranking | None, *, failed: bool = False) -> None:
    """Log the ranking (a JSON artifact, the best point's score and overrides) and end the sweep's run."""
    if not run_id:
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    if ranking is not None:
        client.log_dict(run_id, ranking.model_dump(mode="json"), "sweep_ranking.json")
        best = ranking.best
        if best is not None:
            client.log_metric(run_id, f"best/{ranking.metric}", best.score)
            client.set_tag(run_id, "sftflow.sweep.best_point", best.label)
            if best.mlflow_run_id:
                client.set_tag(run_id, "sftflow.sweep.best_run_id", best.mlflow_run_id)
        client.log_metric(run_id, "points_failed", sum(o.status == "failed" for o in ranking.points))
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
