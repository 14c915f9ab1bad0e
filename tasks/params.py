"""The pipeline's parameter: what a user fills in on the Prefect UI's run form.

Every field is a plain type with a description, enums render as dropdowns, and anything left
empty keeps the value of the base config (the embedded demo, or ``config_path``).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from sft_core.config import TRLConfig, default_sft_config

FLOW_RUN_TAG = "prefect.flow_run_id"  # on the MLflow run: a retried flow run finds the run it opened


def _no_null_default(schema: dict[str, Any]) -> None:
    if "default" in schema and schema["default"] is None:
        del schema["default"]  # the UI would prefill a null, then reject it as not of the type


# "Empty keeps the base config's value": shown to the UI as a plain input of the type, left empty,
# rather than a switch between the type and None.
_EMPTY = Field(json_schema_extra=_no_null_default)
OptionalInt = Annotated[int | None, WithJsonSchema({"type": "integer"}), _EMPTY]
OptionalFloat = Annotated[float | None, WithJsonSchema({"type": "number"}), _EMPTY]
OptionalStr = Annotated[str | None, WithJsonSchema({"type": "string"}), _EMPTY]
OptionalStrList = Annotated[list[str] | None, WithJsonSchema({"type": "array", "items": {"type": "string"}}), _EMPTY]
Precision = Annotated[Literal["no", "bf16", "fp16"] | None,
                      WithJsonSchema({"enum": ["no", "bf16", "fp16", None]}), _EMPTY]
Policy = Annotated[Literal["gate", "always", "never"] | None,
                   WithJsonSchema({"enum": ["gate", "always", "never", None]}), _EMPTY]


# Form fields whose defaults are for the demo: a base YAML that sets the config field keeps its value
# (configs/smollm2_lora.yaml registers as smollm2-facts, not as the demo's model, whose champion it would face).
FORM_DEFAULTS_YIELD_TO_YAML = {"registered_model_name": "tracking.registered_model_name",
                               "experiment_name": "tracking.experiment_name"}


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "SFT run"})

    config_path: OptionalStr = Field(
        None, description="Base sft_core YAML config (e.g. configs/alpaca_local.yaml). Empty: the embedded demo.")
    model_path: OptionalStr = Field(
        None, description="Local HuggingFace model folder, or 'embedded:tiny-llama'. Empty: from the base config.")
    data_path: OptionalStr = Field(
        None, description="Training data: .jsonl/.json/.csv/.parquet/.txt, a saved dataset folder, or 'embedded:demo'.")
    total_steps: OptionalInt = Field(None, ge=1, description="Optimizer steps (demo default: 2000).")
    batch_size: OptionalInt = Field(None, ge=1, description="Rows per micro-batch, per process (demo default: 64).")
    learning_rate: OptionalFloat = Field(None, gt=0, description="Peak learning rate (demo default: 0.001).")
    eval_interval: OptionalInt = Field(None, ge=1, description="Steps between generation evals (demo default: 500).")
    mixed_precision: Precision = Field(None, description="Autocast precision.")
    metrics: OptionalStrList = Field(
        None, description="Eval metrics: built-in names (exact_match, length, distinct_n, rouge) or "
                          "'module:function' from an allowed module. Empty: from the base config.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description='Any other config field, dotted: {"train.seed": 7, "data.max_rows": 500}.')

    num_processes: int = Field(1, ge=1, description="Training processes. >1 launches torchrun (CPU) or "
                                                    "accelerate launch (GPU) as a child process.")
    accelerate_config: Literal["single", "ddp", "zero2", "zero3"] = Field(
        "single", description="Shipped Accelerate config for GPU launches (DeepSpeed ZeRO-2/3 need the extra).")
    launch: Literal["auto", "in_process", "subprocess"] = Field(
        "auto", description="auto: in this process for 1 process without a timeout, else a child process.")
    train_timeout_minutes: OptionalFloat = Field(
        None, gt=0, description="Kill training (the whole process tree) after this long. Runs it as a child.")
    concurrency_limit: OptionalStr = Field(
        None, description="Prefect global concurrency limit to hold while training (created with limit 1 when "
                          "missing). Empty: 'sft-train' for a deployment's run, none for a local run.")

    run_name: OptionalStr = Field(
        None, description="Run folder name under runs_dir. Empty: the flow run's name. An existing run resumes "
                          "from its last checkpoint.")
    runs_dir: str = Field("runs", description="Where run folders are created.")
    export: Literal["final", "best"] = Field("final", description="Which weights to export and register.")
    merge_adapters: bool = Field(
        True, description="With LoRA (model.peft_config): export and register the merged full model; off: the "
                          "adapter alone.")
    experiment_name: str = Field("sftflow", description="MLflow experiment.")
    tracking_uri: OptionalStr = Field(
        None, description="MLflow tracking URI. Empty: $MLFLOW_TRACKING_URI, else sqlite in the working folder.")
    registered_model_name: OptionalStr = Field(
        "sftflow-demo", description="Register the exported model under this name. Empty: the base config's "
                                    "tracking.registered_model_name (the demo's: none, log without registering).")
    model_alias: str = Field("candidate", description="Alias set on the new model version.")
    promotion_policy: Policy = Field(
        None, description="Whether the new version becomes @champion: gate (only if it beats the champion on the "
                          "gate set), always, or never. Empty: the base config's (default: gate).")

    def to_sft_config(self) -> TRLConfig:
        """The sft_core config this run trains with: its base YAML (or the demo) plus the form's fields."""
        base = TRLConfig.load_yaml(self.config_path) if self.config_path else default_sft_config()
        overrides = self.config_overrides()
        for form_field, key in FORM_DEFAULTS_YIELD_TO_YAML.items():
            section, name = key.split(".")
            if (form_field not in self.model_fields_set and key not in self.overrides
                    and getattr(getattr(base, section), name) is not None):
                overrides.pop(key, None)  # the YAML names it; only a value typed into the form overrides that
        return base.with_overrides(overrides)

    @property
    def train_timeout_s(self) -> float | None:
        return self.train_timeout_minutes * 60 if self.train_timeout_minutes else None

    def config_overrides(self) -> dict[str, Any]:
        """The form fields as dotted sft_core overrides (only those that were filled in)."""
        mapped = {
            "model.model_path": self.model_path, "data.path": self.data_path, "train.total_steps": self.total_steps,
            "train.batch_size": self.batch_size, "optimizer.kwargs.lr": self.learning_rate,
            "train.eval_interval": self.eval_interval, "train.mixed_precision": self.mixed_precision,
            "method.metrics": self.metrics, "tracking.tracking_uri": self.tracking_uri,
            "tracking.experiment_name": self.experiment_name,
            "tracking.registered_model_name": self.registered_model_name,
            "tracking.registered_model_alias": self.model_alias,
            "distributed.num_processes": self.num_processes, "distributed.accelerate_config": self.accelerate_config,
            "model.merge_adapters_on_export": self.merge_adapters, "promotion.policy": self.promotion_policy,
        }
        return {**{k: v for k, v in mapped.items() if v is not None}, **self.overrides}


def run_name_for(params: PipelineConfig, flow_run_name: str | None) -> str:
    """The run folder's name: the form's run_name, else the flow run's name (Prefect's two-word names)."""
    return params.run_name or flow_run_name or time.strftime("run-%Y%m%d-%H%M%S")
