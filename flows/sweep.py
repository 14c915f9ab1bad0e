"""A sweep over config fields as a Prefect flow: each point of the grid is a child ``sft-pipeline`` run.

    python -m flows.sweep --grid optimizer.kwargs.lr=1e-3,3e-3 --grid train.seed=1,2 [--config ...] [--set ...]

Points train one after another, in this process, as subflow runs of this flow run (the Prefect UI
shows them under it), each holding the ``sft-train`` concurrency limit while it trains, so a sweep
shares the machine with other pipeline runs. Points log nested under the sweep's MLflow run and
register nothing; the sweep ranks them by the promotion gate's metric, registers the best point's
model and sends only that one through the gate. A failed point is reported in the ranking; the sweep
fails only when every point fails.

Why not threads: in-process training is not thread-safe (torch's global RNG, Accelerate's shared
state, the data cache's per-process temp folder). Parallel points belong on a Prefect work pool.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m flows.sweep`: with no Prefect server configured, boot a temporary one
    from flows.local_server import start_temporary_server_early  # while the imports below run

    _temporary_server = start_temporary_server_early()

import argparse  # noqa: E402 - after the server kick-off above, on purpose
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.local_server import start_temporary_server_early
from flows.sft import _warm_up_local_tracking, sft_pipeline
from sft_core.config import parse_set_args
from sft_core.errors import SFTError
from sft_core.promotion import PromotionDecision
from sft_core.sweep import PointOutcome, Ranking, check_grid, close_sweep_run, parse_grid_args, point_label
from tasks.params import PipelineConfig
from tasks.sweep import SweepPlan, completed_outcome, open_sweep, point_params, rank_points, register_best


class SweepResult(BaseModel):
    name: str
    mlflow_run_id: str | None  # the parent run the points nest under
    ranking: Ranking
    registered_name: str | None = None
    version: str | None = None  # the best point's registered version
    promotion: PromotionDecision | None = None


class AllPointsFailed(SFTError):
    """Every point of the sweep failed; the message lists each point's error."""


@flow(name="sft-sweep")
def sft_sweep(grid: dict[str, list[Any]], config: PipelineConfig = PipelineConfig()) -> SweepResult:
    """Train every combination of ``grid`` (dotted config fields -> values) as a child sft-pipeline run
    on ``config``; register the best and gate it by ``config``'s promotion settings."""
    name = config.run_name or flow_run.get_name() or "sweep"
    plan = open_sweep(config, grid, name)
    ranking = None
    try:
        outcomes = [run_point(config, plan, index) for index in range(len(plan.points))]
        ranking = rank_points(config, outcomes)
        failed = [o for o in outcomes if o.status == "failed"]
        if len(failed) == len(outcomes):
            raise AllPointsFailed(f"all {len(outcomes)} points of sweep {name} failed:\n"
                                  + "\n".join(f"- {o.label}: {o.error}" for o in failed))
        result = SweepResult(name=name, mlflow_run_id=plan.parent_run_id, ranking=ranking)
        best = ranking.best
        registered_name = config.to_sft_config().tracking.registered_model_name
        if best is None:
            get_run_logger().warning("No point scored %s: nothing to register", ranking.metric)
        elif not registered_name or not best.model_uri:
            get_run_logger().info("Best point %s (%s=%s); not registered (%s)", best.label, ranking.metric,
                                  best.score, "no registered_model_name" if not registered_name else "no MLflow model")
        else:
            exported = register_best(config, best, name)
            result = result.model_copy(update=dict(registered_name=exported.registered_name,
                                                   version=exported.version, promotion=exported.promotion))
    except BaseException:
        _close_quietly(plan, ranking, failed=True)  # the sweep's own error is the one to see
        raise
    _close_quietly(plan, ranking, failed=False)
    return result


def _close_quietly(plan: SweepPlan, ranking: Ranking | None, *, failed: bool) -> None:
    """End the sweep's MLflow run; an MLflow hiccup here is a warning, not a failed sweep whose best point is
    already registered and gated (or a mask over the error that failed it)."""
    try:
        close_sweep_run(plan.tracking_uri, plan.parent_run_id, ranking, failed=failed)
    except Exception as error:  # noqa: BLE001
        get_run_logger().warning("Could not close the sweep's MLflow run %s: %r", plan.parent_run_id, error)


def run_point(config: PipelineConfig, plan: SweepPlan, index: int) -> PointOutcome:
    """One point as a child sft-pipeline flow run; its failure becomes the point's outcome, not the sweep's."""
    params = point_params(config, plan, index)
    point = plan.points[index]
    state = sft_pipeline.with_options(flow_run_name=params.run_name)(params, return_state=True)
    flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    if not state.is_completed():
        error = state.message or state.name
        get_run_logger().warning("Point %d (%s) %s: %s", index + 1, point_label(point), state.name.lower(), error)
        return PointOutcome(index=index, point=point, status="failed", error=error, run_name=params.run_name,
                            flow_run_id=flow_run_id)
    return completed_outcome(index, point, state.result(), flow_run_id, plan.tracking_uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description="Run a grid sweep locally.")
    parser.add_argument("--grid", action="append", default=[], required=True, metavar="SECTION.FIELD=V1,V2",
                        help="a config field and its values (comma-separated, or a YAML list); repeatable")
    parser.add_argument("--config", help="base sft_core YAML (default: the embedded demo)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a base config field for every point; repeatable")
    parser.add_argument("--run-name", help="the sweep's name; points run as NAME-p1, NAME-p2, ...")
    args = parser.parse_args(argv)
    try:
        grid = check_grid(parse_grid_args(args.grid))  # a typo fails here, before any run starts
    except SFTError as err:
        parser.error(str(err))
    params = PipelineConfig(config_path=args.config, overrides=parse_set_args(args.set), run_name=args.run_name)
    server = globals().get("_temporary_server") or start_temporary_server_early()  # None: a configured server
    if server is not None:
        _warm_up_local_tracking(params)
        server.wait_until_up()
    result = sft_sweep(grid, params)
    ranking = result.ranking
    print(f"\nSweep {result.name}: {len(ranking.points)} points ranked by {ranking.metric} ({ranking.mode} is better)")
    for position, outcome in enumerate(ranking.points, 1):
        shown = f"{outcome.score:.4f}" if outcome.score is not None else f"FAILED: {outcome.error}"
        print(f"  {position}. {outcome.label:<50} {shown}  ({outcome.run_name})")
    print(f"MLflow parent run: {result.mlflow_run_id}")
    if result.version:
        print(f"Registered:        models:/{result.registered_name}/{result.version} (alias "
              f"@{params.model_alias}); promotion: {result.promotion.decision} ({result.promotion.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
