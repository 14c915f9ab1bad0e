"""The typed results the five tasks hand each other: paths, ids, counts and fingerprints, never models.

Prefect persists them as JSON, so a retried or cached task picks them up again.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sft_core.config import SFTConfig


class DataSpec(BaseModel):
    """Everything that decides the tokenized data, and nothing else (so a new LR hits the cache)."""

    data: dict[str, Any]
    tokenizer: dict[str, Any]
    model_path: str
    trust_remote_code: bool
    seq_length: int
    seed: int
    source_fingerprint: str
    prepared_root: str


class RunConfig(BaseModel):
    run_name: str
    run_dir: str
    config: SFTConfig
    config_path: str
    data_spec: DataSpec
    mlflow_run_id: str | None
    mlflow_experiment_id: str | None
    tracking_uri: str
    launch: str
    train_timeout_s: float | None = None
    concurrency_limit: str | None = None
    export: str = "final"
    registered_model_name: str | None = None
    model_alias: str = "candidate"


class PreparedData(BaseModel):
    path: str
    train_rows: int
    eval_rows: int
    eval_prompts: int
    train_tokens: int
    target_tokens: int
    truncated_rows: int
    dropped_rows: dict[str, int] = Field(default_factory=dict)
    fingerprint: str
    source: str


class MetricSuite(BaseModel):
    metrics: list[str]
    eval_prompts: int


class TrainResult(BaseModel):
    model_dir: str
    last_checkpoint: str | None
    best_checkpoint: str | None
    steps: int
    target_tokens_seen: int
    train_seconds: float
    target_tokens_per_s: float
    final_metrics: dict[str, float]
    best_metric: str | None = None
    best_value: float | None = None
    mlflow_run_id: str | None = None


class ExportedModel(BaseModel):
    model_dir: str
    files: list[str]
    model_uri: str | None
    registered_name: str | None
    version: str | None
    alias: str | None


class PipelineResult(BaseModel):
    run_name: str
    run_dir: str
    model_dir: str
    final_metrics: dict[str, float]
    mlflow_run_id: str | None
    tracking_uri: str
    model_uri: str | None
    registered_name: str | None
    version: str | None
