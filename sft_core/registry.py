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
    model_id: str | None = None  # MLflow 3's LoggedModel id (m-...)


def pip_requirements() -> list[str]:
    """Pinned to what is installed, so `mlflow models serve` rebuilds the same environment."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}"
            for name in ("torch", "transformers", "accelerate", "safetensors", "tokenizers", "peft")]


def is_adapter_folder(model_dir: str | Path) -> bool:
    """An adapter export (PEFT's adapter_config.json) rather than a full model folder."""
    return (Path(model_dir) / "adapter_config.json").is_file()


def load_adapter_model(model_dir: str | Path):
    """The adapter on its base, as a PEFT model. MLflow's transformers flavor logs a PEFT model as the
    adapter plus its base (the base's weights too, when the base is a local folder rather than a hub name)."""
    import json

    from peft import PeftModel

    from sft_core.config import EMBEDDED_MODEL, ModelConfig
    from sft_core.errors import ModelLoadError
    from sft_core.modeling import load_base_model

    base = json.loads((Path(model_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]
    if base == EMBEDDED_MODEL:
        raise ModelLoadError(f"{model_dir}: an adapter over the embedded model has no base to load by name; set "
                             "model.merge_adapters_on_export=true, or train from a folder (python -m sft_core "
                             "export-embedded DIR)")
    return PeftModel.from_pretrained(load_base_model(ModelConfig(model_path=base, dtype="auto"), seed=0), model_dir)


def log_and_register(
    model_dir: str | Path, *, run_id: str, tracking_uri: str | None = None, registered_name: str | None = None,
    alias: str | None = None, step: int = 0, tags: dict[str, str] | None = None,
) -> RegisteredModel:
    """``step``: the step whose run metrics the logged model carries (MLflow attaches those logged at it,
    so step 0 would mean the untrained scores). ``tags`` go on the logged model and the registered version."""
    import mlflow
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    # Logged from memory: logging from a checkpoint folder breaks with transformers 5.x. MLflow's
    # transformers flavor lacked 5.x support (https://github.com/mlflow/mlflow/issues/20604); its
    # checkpoint-folder path read `pipeline.framework`, which 5.x removed, until
    # https://github.com/mlflow/mlflow/pull/20728. Not re-checked against the MLflow pinned here.
    adapter = is_adapter_folder(model_dir)
    model = load_adapter_model(model_dir) if adapter else AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # Token-id columns are never missing, so MLflow's schema hint does not apply:
        # https://www.mlflow.org/docs/latest/models.html#handling-integers-with-missing-values
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer}, name="model", task="text-generation",
            pip_requirements=pip_requirements(), registered_model_name=registered_name, step=step, tags=tags,
        )
    version = str(info.registered_model_version) if registered_name else None
    client = mlflow.MlflowClient(uri)
    if registered_name:
        for key, value in (tags or {}).items():
            client.set_model_version_tag(registered_name, version, key, value)
    if registered_name and alias:
        client.set_registered_model_alias(registered_name, alias, version)
    logger.info("Logged %s %s%s", "adapter (with its base)" if adapter else "model", info.model_uri,
                f"; registered {registered_name} v{version}" + (f" @{alias}" if alias else "") if registered_name else "")
    return RegisteredModel(info.model_uri, registered_name, version, alias if registered_name else None,
                           model_id=info.model_id)


def model_id_of(model_uri: str) -> str:
    """The LoggedModel id in a ``models:/m-...`` URI (MLflow 3's logged-model URIs)."""
    return model_uri.removeprefix("models:/").split("/")[0]


def register_logged_model(model_uri: str, *, tracking_uri: str | None, registered_name: str, alias: str | None = None,
                          tags: dict[str, str] | None = None) -> RegisteredModel:
    """Register a model logged earlier without a name (``models:/m-...``, e.g. a sweep's point), as a new
    version carrying the logged model's own tags (lineage, metrics, the flow run that made it) plus ``tags``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(uri)
    model_id = model_id_of(model_uri)
    logged = client.get_logged_model(model_id)
    version_tags = {k: v for k, v in logged.tags.items() if not k.startswith("mlflow.")}
    version_tags.update(tags or {})
    try:
        client.get_registered_model(registered_name)
    except MlflowException:  # the first version of this name
        client.create_registered_model(registered_name)
    version = str(client.create_model_version(registered_name, model_uri, run_id=logged.source_run_id,
                                              tags=version_tags, model_id=model_id).version)
    if alias:
        client.set_registered_model_alias(registered_name, alias, version)
    logger.info("Registered %s as %s v%s%s", model_uri, registered_name, version, f" @{alias}" if alias else "")
    return RegisteredModel(model_uri, registered_name, version, alias, model_id=model_id)


def logged_model_metrics(model_uri: str, *, tracking_uri: str | None) -> dict[str, float]:
    """The metrics a logged model (``models:/m-...``) carries: those of the step it was exported at."""
    import mlflow

    client = mlflow.MlflowClient(resolve_tracking_uri(tracking_uri))
    logged = client.get_logged_model(model_id_of(model_uri))
    return {m.key: m.value for m in logged.metrics or []}
