"""Log an exported model folder to MLflow with the transformers flavor, and register it."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from sft_core.tracking import resolve_tracking_uri

logger = logging.getLogger(__name__)


@dataclass
class RegisteredModel:
    model_uri: str  # models:/m-... (the logged model)
    registered_name: str | None
    version: str | None
    alias: str | None


def pip_requirements() -> list[str]:
    """Pinned to what is installed, so `mlflow models serve` rebuilds the same environment."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "accelerate", "safetensors", "tokenizers")]


def log_and_register(
    model_dir: str | Path, *, run_id: str, tracking_uri: str | None = None, registered_name: str | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    import mlflow
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    # Logged from memory: logging from a checkpoint folder breaks with transformers 5.x.
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer}, name="model", task="text-generation",
            pip_requirements=pip_requirements(), registered_model_name=registered_name,
        )
    version = str(info.registered_model_version) if registered_name else None
    if registered_name and alias:
        mlflow.MlflowClient(uri).set_registered_model_alias(registered_name, alias, version)
    logger.info("Logged model %s%s", info.model_uri,
                f"; registered {registered_name} v{version}" + (f" @{alias}" if alias else "") if registered_name else "")
    return RegisteredModel(info.model_uri, registered_name, version, alias if registered_name else None)
