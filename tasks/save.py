"""Stage 5: log the exported model to MLflow (transformers flavor), register it, decide whether it becomes
the champion (sft_core.promotion), close the run; then publish the decision as an artifact and an event."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from sft_core.run import save_model
from tasks.artifacts import ExportedModel, PreparedData, Run, TrainSummary
from tasks.promotion import promotion_lock, publish_decision
from tasks.reporting import publish_summary


@task(name="save", persist_result=True, result_serializer="json")
def save(run: Run, trained: TrainSummary, data: PreparedData) -> ExportedModel:
    """The new version gets ``tracking.registered_model_alias`` (the run form's model_alias); ``champion``
    moves to it only if the promotion gate says so."""
    name = run.config.tracking.registered_model_name
    exported = save_model(run, trained, version_tags=flow_run_tags(),
                          promotion_lock=(lambda: promotion_lock(name)) if name else None)
    if exported.promotion is not None:
        get_run_logger().info("Promotion: %s v%s %s (%s)", exported.registered_name, exported.version,
                              exported.promotion.decision, exported.promotion.reason)
        publish_decision(exported.promotion)
    publish_summary(run, data, trained, exported)
    return exported


def flow_run_tags() -> dict[str, str]:
    """Which flow run made the version, and where to see it."""
    tags = {"prefect.flow_run_id": str(flow_run.id)} if flow_run.id else {}
    url = flow_run.ui_url
    if url and not url.startswith("None"):  # no UI configured: Prefect still formats a URL from None
        tags["prefect.flow_run_url"] = url
    return tags
