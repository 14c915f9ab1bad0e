"""Where a registered model came from: the data (source file and eval set, through ``mlflow.data``),
the config, the code, the base model, and the step whose metrics it carries.

MLflow attaches to a logged model the run's metrics *at the step it is logged with* (step 0 unless
told otherwise), so ``export_step`` names the step the exported weights were evaluated at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

from sft_core.data.sources import fingerprint_source
from sft_core.layout import METRICS_FILE
from sft_core.tracking import read_history

logger = logging.getLogger(__name__)

# Fields that say where a run writes and logs, not what model it makes: left out of the config digest.
_PER_RUN_FIELDS = {
    "train": ("checkpoint_dir", "logging_dir", "resume_from_checkpoint", "tracker", "run_name", "project_name",
              "entity_name", "group_name", "tags"),
    "data": ("cache_dir", "num_proc"),
}
_NOT_THE_MODEL = ("tracking", "promotion")  # sections that never change the weights


def config_digest(config: Any) -> str:
    """sha256 of what decides the model: the same config gives the same digest in any run folder."""
    raw = config.to_dict()
    for section in _NOT_THE_MODEL:
        raw.pop(section, None)
    for section, fields in _PER_RUN_FIELDS.items():
        for field in fields:
            raw.get(section, {}).pop(field, None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def git_commit(where: str | Path | None = None) -> str | None:
    """The checkout's commit (with "-dirty" when it has uncommitted changes); None outside a git checkout."""
    cwd = Path(where) if where else Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty else "")


def export_step(summary: Any, *, export: str, logs_dir: str | Path) -> int:
    """The step the exported weights were evaluated at: the last for the final model; for best/, the step
    whose best_metric value was the best (read back from metrics.jsonl)."""
    if export != "best" or not summary.best_checkpoint or summary.best_metric is None:
        return int(summary.steps)
    for row in read_history(Path(logs_dir) / METRICS_FILE):
        if row.get(summary.best_metric) == summary.best_value:
            return int(row["step"])
    return int(summary.steps)


def metric_tags(logs_dir: str | Path, step: int) -> dict[str, str]:
    """The eval metrics at ``step`` as version tags, so the registry page itself shows what the weights
    scored (the logged model carries them too, as metrics)."""
    tags = {"sftflow.metrics_step": str(step)}
    for row in read_history(Path(logs_dir) / METRICS_FILE):
        if row.get("step") == step:
            tags.update({f"sftflow.metric.{k}": repr(float(v)) for k, v in row.items()
                         if k.startswith(("eval/", "metrics/"))})
    return tags


def lineage_tags(config: Any, *, base_model: str, data_digest: str | None = None,
                 extra: dict[str, str] | None = None) -> dict[str, str]:
    """Tags for a logged model and its registered version. ``data_digest``: the data's digest when the run
    read it (a file rewritten during training must not lend its new digest to a model that never saw it)."""
    data_path = config.data.path or ""
    tags = {
        "sftflow.data.path": data_path,
        "sftflow.data.digest": data_digest or fingerprint_source(data_path),
        "sftflow.config.digest": config_digest(config),
        "sftflow.base_model": base_model,
    }
    if config.data.eval_path:
        tags["sftflow.data.eval_path"] = config.data.eval_path
        tags["sftflow.data.eval_digest"] = fingerprint_source(config.data.eval_path)
    commit = git_commit()
    if commit:
        tags["sftflow.git.commit"] = commit
    return {**tags, **(extra or {})}


def record_data_inputs(tracking_uri: str, run_id: str, config: Any, eval_prompts: list[Any] | None) -> None:
    """The source data file (digest: its content hash) and the eval prompts, as the run's ``mlflow.data`` inputs."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    data = config.data
    inputs = [(MetaDataset(_dataset_source(data.path), name=Path(str(data.path)).name or str(data.path),
                           digest=fingerprint_source(data.path)), "training")]
    if data.eval_path:
        inputs.append((MetaDataset(_dataset_source(data.eval_path), name=Path(data.eval_path).name,
                                   digest=fingerprint_source(data.eval_path)), "evaluation"))
    if eval_prompts:
        inputs.append((_prompts_dataset(eval_prompts, source=data.eval_path or data.path), "evaluation"))
    entities = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
                for dataset, context in inputs]
    mlflow.MlflowClient(tracking_uri).log_inputs(run_id, entities)


def _prompts_dataset(prompts: list[Any], *, source: str | None) -> Any:
    import mlflow.data
    import pandas as pd

    rows = [p if isinstance(p, dict) else {"prompt": p} for p in prompts]
    table = pd.DataFrame([{k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in r.items()}
                          for r in rows])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        return mlflow.data.from_pandas(table, source=_dataset_source(source), name="eval-prompts")


def _dataset_source(path: str | None) -> Any:
    """A local file or folder as a file source; anything else (a hub name, embedded:demo) by name."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    local = Path(str(path)).expanduser()
    if path and local.exists():
        return resolve_dataset_source(str(local.resolve()))
    return CodeDatasetSource(tags={"sftflow.data.path": str(path)})
