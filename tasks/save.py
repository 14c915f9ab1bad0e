"""Stage 5: log the exported model to MLflow (transformers flavor), register it, close the run."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from sft_core.registry import log_and_register
from tasks.artifacts import ExportedModel, PreparedData, RunConfig, TrainResult
from tasks.reporting import publish_summary


@task(name="save", persist_result=True, result_serializer="json")
def save(run: RunConfig, trained: TrainResult, data: PreparedData) -> ExportedModel:
    model_dir = Path(trained.best_checkpoint if run.export == "best" and trained.best_checkpoint else trained.model_dir)
    files = sorted(p.name for p in model_dir.iterdir())
    uri = version = None
    if run.mlflow_run_id:
        registered = log_and_register(model_dir, run_id=run.mlflow_run_id, tracking_uri=run.tracking_uri,
                                      registered_name=run.registered_model_name, alias=run.model_alias)
        uri, version = registered.model_uri, registered.version
        end_mlflow_run(run, "FINISHED")
    else:
        get_run_logger().warning("No MLflow run (tracking was unreachable): the model is only at %s", model_dir)
    exported = ExportedModel(model_dir=str(model_dir), files=files, model_uri=uri,
                             registered_name=run.registered_model_name if version else None, version=version,
                             alias=run.model_alias if version else None)
    publish_summary(run, data, trained, exported)
    return exported


def end_mlflow_run(run: RunConfig, status: str) -> None:
    import mlflow

    mlflow.MlflowClient(run.tracking_uri).set_terminated(run.mlflow_run_id, status)
