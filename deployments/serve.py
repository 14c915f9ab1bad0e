"""Serve the SFT pipeline: a retraining deployment (weekly, and on new data), an ad-hoc one for the UI's run
form, the `watch-data` flow that announces new data, and `sft-sweep` for grid sweeps.

    prefect server start                                  # terminal 1 (UI at http://127.0.0.1:4200)
    python -m deployments.serve --data /data/train.jsonl  # terminal 2: registers the deployments, runs their runs

Runs execute in this process's working folder: runs/ and mlflow.db (or $MLFLOW_TRACKING_URI) land there.

sft-retrain runs on its cron schedule with --data, and on each `sftflow.data.updated` event with the
event's path (`python -m flows.data_updated PATH`, or watch-data): at most one run per data path per
RETRAIN_WINDOW_S, however many events arrive in that window.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Interval

from flows.sft import sft_pipeline
from flows.sweep import sft_sweep
from flows.watch_data import watch_data
from tasks.data_events import DATA_UPDATED_EVENT, PATH_LABEL, RESOURCE_PREFIX
from tasks.params import PipelineConfig

RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC: pick up the week's new data
RETRAIN_PARAMETERS = PipelineConfig(registered_model_name="sftflow-demo", model_alias="candidate")
# Events for one data path within this many seconds of the one that started a run start no other:
# a burst of writes (or data-updated and watch-data both noticing) is one retraining run.
RETRAIN_WINDOW_S = 60
WATCH_INTERVAL_S = 600  # watch-data: every 10 minutes
# The triggered run's data_path: the event's path label, rendered by the server when the event arrives.
EVENT_DATA_PATH = "{{ event.resource.get('" + PATH_LABEL + "') }}"


def retrain_parameters(data_path: str | None = None, config_path: str | None = None) -> PipelineConfig:
    """sft-retrain's parameters: the demo's registered model and alias, on ``data_path`` (empty: the base config's)."""
    return RETRAIN_PARAMETERS.model_copy(update={"data_path": data_path, "config_path": config_path})


def retrain_on_new_data(parameters: PipelineConfig, within_s: int = RETRAIN_WINDOW_S) -> DeploymentEventTrigger:
    """Run sft-retrain on the path of each sftflow.data.updated event (sent by flows/data_updated.py and the
    watch-data flow). Reactive with threshold 1: the first event for a path starts a run at once, and Prefect
    then ignores that path's events until ``within_s`` after it (for_each: one window per resource id)."""
    config = parameters.model_dump(mode="json", exclude_none=True)
    return DeploymentEventTrigger(
        name="sft-retrain on new data", description=f"A run of sft-retrain on the data named by {DATA_UPDATED_EVENT}",
        expect={DATA_UPDATED_EVENT}, match={"prefect.resource.id": RESOURCE_PREFIX + "*"},
        for_each={"prefect.resource.id"}, posture="Reactive", threshold=1, within=timedelta(seconds=within_s),
        parameters={"config": {**config, "data_path": EVENT_DATA_PATH}},
    )


def watched_paths(watch: list[str], data_path: str | None) -> list[str]:
    """Absolute paths for watch-data (it may run elsewhere): --watch, else --data when that is a local path."""
    chosen = watch or ([data_path] if data_path and Path(data_path).expanduser().exists() else [])
    return list(dict.fromkeys(str(Path(p).expanduser().resolve()) for p in chosen))


def build_deployments(retrain_cron: str = RETRAIN_CRON, *, data_path: str | None = None,
                      config_path: str | None = None, watch: list[str] | None = None) -> list[RunnerDeployment]:
    parameters = retrain_parameters(data_path, config_path)
    retrain = sft_pipeline.to_deployment(
        name="sft-retrain", cron=retrain_cron,
        parameters={"config": parameters.model_dump(mode="json", exclude_none=True)},
        triggers=[retrain_on_new_data(parameters)],
        description="Retraining: on its schedule with its data_path, and on each sftflow.data.updated event with "
                    "the event's path (one run per path per minute); the new version gets the 'candidate' alias.",
        tags=["sft", "scheduled"],
    )
    adhoc = sft_pipeline.to_deployment(
        name="sft-adhoc", description="Ad-hoc fine-tuning runs: fill in the form under Run > Custom run.",
        tags=["sft", "ad-hoc"],
    )
    paths = watched_paths(watch or [], data_path)
    watcher = watch_data.to_deployment(
        name="watch-data", parameters={"paths": paths},
        schedules=[Interval(WATCH_INTERVAL_S, active=bool(paths))],  # nothing to watch: run it by hand only
        description="Every 10 minutes: send sftflow.data.updated for each watched path whose content changed.",
        tags=["sft", "data"],
    )
    sweep = sft_sweep.to_deployment(
        name="sft-sweep", description="Grid sweeps: each point a child sft-pipeline run; only the best is registered "
                                      "and gated. Fill in the grid as {\"optimizer.kwargs.lr\": [0.001, 0.003]}.",
        tags=["sft", "sweep"],
    )
    return [retrain, adhoc, watcher, sweep]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cron", default=RETRAIN_CRON, help=f"sft-retrain schedule (default: {RETRAIN_CRON!r})")
    parser.add_argument("--data", metavar="PATH_OR_URI",
                        help="sft-retrain's data on its schedule: a local file or folder, a hub dataset name "
                             "(default: the base config's, the embedded demo)")
    parser.add_argument("--retrain-config", metavar="YAML", help="sft-retrain's base sft_core config "
                                                                  "(default: the embedded demo's)")
    parser.add_argument("--watch", action="append", default=[], metavar="PATH",
                        help="a local data file or folder for watch-data (repeatable; default: --data if local)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs executed at once by this server")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    serve(*build_deployments(args.cron, data_path=args.data, config_path=args.retrain_config, watch=args.watch),
          limit=args.limit)


if __name__ == "__main__":
    main()
