"""The SFT pipeline as a Prefect flow: configure -> prepare data -> define metrics -> train -> save.

Run it locally (``python -m flows.sft``, or ``sft_pipeline()`` from Python), or serve it and
trigger runs from the Prefect UI (see deployments/).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m flows.sft`: boot the local Prefect server while the imports below run
    from flows.local_server import start_temporary_server_early

    _temporary_server = start_temporary_server_early()

import argparse  # noqa: E402 - after the server kick-off above, on purpose
import shutil
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.local_server import use_lean_temporary_server
from sft_core.checkpoint import list_checkpoints
from sft_core.config import parse_set_args
from sft_core.tracking import ensure_experiment, probe_tracking_server, redact_uri, resolve_tracking_uri
from tasks.artifacts import PipelineResult
from tasks.configure import FLOW_RUN_TAG, build_config, configure, pipeline_tracking_uri
from tasks.define_metrics import define_metrics
from tasks.params import PipelineConfig
from tasks.prepare_data import prepare_data
from tasks.save import save
from tasks.train import train


def _close_failed_run(flow, flow_run, state) -> None:
    """A failed or crashed flow marks its MLflow run FAILED (not RUNNING forever), and removes its
    run folder when that holds nothing to keep (no checkpoint, no model): bad input leaves no half-made run."""
    try:
        params = PipelineConfig.model_validate(flow_run.parameters.get("config") or {})
        run_dir = Path(params.runs_dir) / (params.run_name or flow_run.name)
        if run_dir.is_dir() and not list_checkpoints(run_dir / "checkpoints") and not (run_dir / "model").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        _mark_mlflow_run_failed(params, str(flow_run.id))
    except Exception:  # noqa: BLE001 - a hook must not mask the flow's own error
        pass


def _mark_mlflow_run_failed(params: PipelineConfig, flow_run_id: str) -> None:
    import mlflow

    uri = resolve_tracking_uri(params.tracking_uri)
    probe_tracking_server(uri)  # a down server would hold the hook in MLflow's retries for minutes
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(params.experiment_name)
    if experiment is None:
        return
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'"):
        client.set_terminated(run.info.run_id, "FAILED")


@flow(name="sft-pipeline", on_failure=[_close_failed_run], on_crashed=[_close_failed_run])
def sft_pipeline(config: PipelineConfig = PipelineConfig()) -> PipelineResult:
    """Fine-tune a causal LM and register it in MLflow."""
    run = configure(config)
    data = prepare_data(run.data_spec)
    if not Path(data.path).exists():  # a cached result whose folder was deleted since
        data = prepare_data.with_options(refresh_cache=True)(run.data_spec)
    metrics = define_metrics(run.config.method.metrics, data, run.config.method.metric_module_prefixes)
    trained = train(run, data, metrics)
    exported = save(run, trained, data)
    get_run_logger().info("Model: %s | MLflow run %s (%s)%s", exported.model_dir, run.mlflow_run_id,
                          redact_uri(run.tracking_uri),
                          f" | registered {exported.registered_name} v{exported.version}" if exported.version else "")
    return PipelineResult(
        run_name=run.run_name, run_dir=run.run_dir, model_dir=exported.model_dir, final_metrics=trained.final_metrics,
        mlflow_run_id=run.mlflow_run_id, tracking_uri=redact_uri(run.tracking_uri), model_uri=exported.model_uri,
        registered_name=exported.registered_name, version=exported.version,
    )


def _warm_up_local_tracking(params: PipelineConfig) -> None:
    """Import MLflow and create a local sqlite store and experiment now, so configure finds them.

    Only for a valid config whose store is a local sqlite file; anything else is left to configure,
    which reports what is wrong (and nothing is created for a config it rejects)."""
    try:
        uri = pipeline_tracking_uri(params, build_config(params))
        if uri.startswith("sqlite:///"):
            ensure_experiment(params.experiment_name, uri)
    except Exception:  # noqa: BLE001 - configure runs the same steps and reports failures properly
        pass


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
    server = globals().get("_temporary_server")
    if server is not None:
        _warm_up_local_tracking(params)  # on the core the server's boot leaves idle
        server.wait_until_up()  # the flow's first API call must find it up
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
