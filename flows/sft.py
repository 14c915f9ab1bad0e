"""The SFT pipeline as a Prefect flow: configure -> prepare data -> define metrics -> train -> save.

Run it locally (``python -m flows.sft``, or ``sft_pipeline()`` from Python), or serve it and
trigger runs from the Prefect UI (see deployments/).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m flows.sft`: with no Prefect server configured, boot Prefect's
    from flows.local_server import start_temporary_server_early  # temporary one while the imports below run

    _temporary_server = start_temporary_server_early()

import argparse  # noqa: E402 - after the server kick-off above, on purpose
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.local_server import start_temporary_server_early
from sft_core.config import parse_set_args
from sft_core.run import fail_run
from sft_core.tracking import ensure_experiment, redact_uri, resolve_tracking_uri
from tasks.artifacts import PipelineResult
from tasks.configure import configure
from tasks.data_events import hand_back_missed_change
from tasks.define_metrics import define_metrics
from tasks.params import PipelineConfig, run_name_for
from tasks.prepare_data import prepare_data
from tasks.save import save
from tasks.train import train


def _fail_run(flow, flow_run, state) -> None:
    """A failed or crashed flow marks its MLflow run FAILED (not RUNNING forever), and removes its run
    folder when that holds nothing to keep (no checkpoint, no model): bad input leaves no half-made run."""
    try:
        params = PipelineConfig.model_validate(flow_run.parameters.get("config") or {})
        fail_run(Path(params.runs_dir).resolve() / run_name_for(params, flow_run.name))
    except Exception:  # noqa: BLE001 - a hook must not mask the flow's own error
        pass


@flow(name="sft-pipeline", on_failure=[_fail_run], on_crashed=[_fail_run])
def sft_pipeline(config: PipelineConfig = PipelineConfig()) -> PipelineResult:
    """Fine-tune a causal LM and register it in MLflow."""
    run = configure(config)
    data = prepare_data(run)
    if not Path(data.path).exists():  # a cached result whose folder was deleted since
        data = prepare_data.with_options(refresh_cache=True)(run)
    metrics = define_metrics(run, data)
    trained = train(run, data, concurrency_limit=config.concurrency_limit, wait_for=[metrics])
    exported = save(run, trained, data)
    hand_back_missed_change(run.config.data.path, run.data_digest)  # a change the trigger's window swallowed
    tracking_uri = redact_uri(run.config.tracking.tracking_uri or "")
    get_run_logger().info("Model: %s | MLflow run %s (%s)%s", exported.model_dir, run.mlflow_run_id, tracking_uri,
                          f" | registered {exported.registered_name} v{exported.version}" if exported.version else "")
    return PipelineResult(
        run_name=run.name, run_dir=run.root, model_dir=exported.model_dir, final_metrics=trained.final_metrics,
        mlflow_run_id=run.mlflow_run_id, tracking_uri=tracking_uri, model_uri=exported.model_uri,
        registered_name=exported.registered_name, version=exported.version,
        promotion=exported.promotion.decision if exported.promotion else None,
    )


def _warm_up_local_tracking(params: PipelineConfig) -> None:
    """Import MLflow and create a local sqlite store and experiment now, so configure finds them.

    Only for a valid config whose store is a local sqlite file; anything else is left to configure,
    which reports what is wrong (and nothing is created for a config it rejects)."""
    try:
        uri = resolve_tracking_uri(params.to_sft_config().tracking.tracking_uri)
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
    params = PipelineConfig(config_path=args.config, overrides=parse_set_args(args.set), run_name=args.run_name,
                            num_processes=args.num_processes)
    server = globals().get("_temporary_server") or start_temporary_server_early()  # None: a configured server
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
    if result.promotion:
        print(f"Promotion:     {result.promotion}  (the champion: models:/{result.registered_name}@champion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
