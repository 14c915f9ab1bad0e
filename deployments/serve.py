"""Serve the SFT pipeline: a scheduled retraining deployment and an ad-hoc one for the UI's run form.

    prefect server start                  # terminal 1 (UI at http://127.0.0.1:4200)
    python -m deployments.serve           # terminal 2: registers both deployments and runs what they trigger

Runs execute in this process's working folder: runs/ and mlflow.db (or $MLFLOW_TRACKING_URI) land there.
"""

from __future__ import annotations

import argparse
import os

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.sft import sft_pipeline
from tasks.params import PipelineConfig

RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC: pick up the week's new data
RETRAIN_PARAMETERS = PipelineConfig(registered_model_name="sftflow-demo", model_alias="candidate")


def build_deployments(retrain_cron: str = RETRAIN_CRON) -> list[RunnerDeployment]:
    retrain = sft_pipeline.to_deployment(
        name="sft-retrain", cron=retrain_cron, parameters={"config": RETRAIN_PARAMETERS.model_dump(mode="json", exclude_none=True)},
        description="Scheduled retraining with the default parameters; the new version gets the 'candidate' alias.",
        tags=["sft", "scheduled"],
    )
    adhoc = sft_pipeline.to_deployment(
        name="sft-adhoc", description="Ad-hoc fine-tuning runs: fill in the form under Run > Custom run.",
        tags=["sft", "ad-hoc"],
    )
    return [retrain, adhoc]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cron", default=RETRAIN_CRON, help=f"sft-retrain schedule (default: {RETRAIN_CRON!r})")
    parser.add_argument("--limit", type=int, default=1, help="flow runs executed at once by this server")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    serve(*build_deployments(args.cron), limit=args.limit)


if __name__ == "__main__":
    main()
