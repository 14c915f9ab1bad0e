"""Stage 5: log the exported model to MLflow (transformers flavor), register it, close the run."""

from __future__ import annotations

from prefect import task

from sft_core.run import save_model
from tasks.artifacts import ExportedModel, PreparedData, Run, TrainSummary
from tasks.reporting import publish_summary


@task(name="save", persist_result=True, result_serializer="json")
def save(run: Run, trained: TrainSummary, data: PreparedData) -> ExportedModel:
    """The registered version gets the alias ``tracking.registered_model_alias`` (the run form's model_alias)."""
    exported = save_model(run, trained)
    publish_summary(run, data, trained, exported)
    return exported
