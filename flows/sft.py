"""The SFT pipeline as a Prefect flow: configure -> prepare data -> define metrics -> train -> save.

Run it locally (``python -m flows.sft``, or ``sft_pipeline()`` from Python), or serve it and
trigger runs from the Prefect UI (see deployments/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.local_server import use_lean_temporary_server
from sft_core.config import parse_set_args
from tasks.artifacts import PipelineResult
from tasks.configure import FLOW_RUN_TAG, configure
from tasks.define_metrics import define_metrics
from tasks.params import PipelineConfig
from tasks.prepare_data import prepare_data
from tasks.save import save
from tasks.train import train


def _mark_mlflow_run_failed(flow, flow_run, state) -> None:
    """A failed or crashed flow leaves its MLflow run marked FAILED, not RUNNING forever."""
    try:
        import mlflow

        params = PipelineConfig.model_validate(flow_run.parameters.get("config") or {})
        from sft_core.tracking import resolve_tracking_uri

        client = mlflow.MlflowClient(resolve_tracking_uri(params.tracking_uri))
        experiment = client.get_experiment_by_name(params.experiment_name)
        if experiment is None:
            return
        for run in client.search_runs([experiment.experiment_id],
                                      filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run.id}'"):
            client.set_terminated(run.info.run_id, "FAILED")
    except Exception:  # noqa: BLE001 - a hook must not mask the flow's own error
        pass


@flow(name="sft-pipeline", on_failure=[_mark_mlflow_run_failed], on_crashed=[_mark_mlflow_run_failed])
def sft_pipeline(config: PipelineConfig = PipelineConfig()) -> PipelineResult:
    """Fine-tune a causal LM and register it in MLflow."""
    run = configure(config)
    data = prepare_data(run.data_spec)
    if not Path(data.path).exists():  # a cached result whose folder was deleted since
        data = prepare_data.with_options(refresh_cache=True)(run.data_spec)
    metrics = define_metrics(run.config.method.metrics, data)
    trained = train(run, data, metrics)
    exported = save(run, trained, data)
    get_run_logger().info("Model: %s | MLflow run %s (%s)%s", exported.model_dir, run.mlflow_run_id, run.tracking_uri,
                          f" | registered {exported.registered_name} v{exported.version}" if exported.version else "")
    return PipelineResult(
        run_name=run.run_name, run_dir=run.run_dir, model_dir=exported.model_dir, final_metrics=trained.final_metrics,
        mlflow_run_id=run.mlflow_run_id, tracking_uri=run.tracking_uri, model_uri=exported.model_uri,
        registered_name=exported.registered_name, version=exported.version,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sft", description="Run the SFT pipeline locally.")
    parser.add_argument("--config", help="base sft_core YAML (default: the embedded demo)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field; repeatable")
    parser.add_argument("--run-name")
    parser.add_argument("--num-processes", type=int, default=1)
    args = parser.parse_args(argv)
    use_lean_temporary_server()
    params = PipelineConfig(config_path=args.config, overrides=parse_set_args(args.set), run_name=args.run_name,
                            num_processes=args.num_processes)
    result = sft_pipeline(params)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.final_metrics.items())
    print(f"\nDone: {metrics}")
    print(f"Model folder:  {result.model_dir}")
    print(f"MLflow run:    {result.mlflow_run_id}  (store: {result.tracking_uri}; browse: "
          f"mlflow ui --backend-store-uri {result.tracking_uri})")
    if result.version:
        print(f"Registered:    models:/{result.registered_name}/{result.version}  "
              f"(alias @{params.model_alias})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
