"""The typed results the five tasks hand each other: paths, ids, counts and fingerprints, never models.

Prefect persists them as JSON, so a retried or cached task picks them up again. Four of them are
the engine's own types; the pipeline adds the metric check and the flow's result.

    configure -> Run -> prepare_data -> PreparedData -> define_metrics -> MetricSuite
              -> train -> TrainSummary -> save -> ExportedModel
"""

from __future__ import annotations

from pydantic import BaseModel

from sft_core.data.prepared import PreparedData
from sft_core.run import ExportedModel, Run
from sft_core.trainer import TrainSummary

__all__ = ["ExportedModel", "MetricSuite", "PipelineResult", "PreparedData", "Run", "TrainSummary"]


class MetricSuite(BaseModel):
    metrics: list[str]  # resolved and importable
    eval_prompts: int  # prompts they will be computed on


class PipelineResult(BaseModel):
    run_name: str
    run_dir: str
    model_dir: str
    final_metrics: dict[str, float]
    mlflow_run_id: str | None
    tracking_uri: str  # credentials masked
    model_uri: str | None
    registered_name: str | None
    version: str | None
    promotion: str | None = None  # promoted | rejected, for a registered version
