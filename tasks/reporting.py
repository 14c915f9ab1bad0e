"""What the Prefect UI shows about a run: a live progress bar, eval samples, a markdown summary, run logs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact

from sft_core.layout import EVAL_SAMPLES_FILE
from sft_core.tracking import redact_uri
from tasks.artifacts import ExportedModel, PreparedData, Run, TrainSummary


class TrainingProgress:
    """A trainer callback: percent of optimizer steps done (at most every ``min_interval_s``), and
    each eval's metrics in the run log."""

    def __init__(self, total_steps: int, logger: logging.Logger | logging.LoggerAdapter,
                 min_interval_s: float = 5.0):
        self.total_steps = total_steps
        self.logger = logger
        self.min_interval_s = min_interval_s
        self._last_update = 0.0
        self.artifact_id = create_progress_artifact(progress=0.0, key="training-progress",
                                                    description="Optimizer steps done, in percent")

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "log":
            self.update(payload["step"])
        elif event == "eval":
            shown = ", ".join(f"{k}={v:.4f}" for k, v in payload["metrics"].items())
            self.logger.info("eval at step %d: %s", payload["step"], shown)
        elif event == "end":
            self.update(payload["steps"], force=True)

    def update(self, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_update >= self.min_interval_s:
            self._last_update = now
            update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * step / max(self.total_steps, 1)))


class ThrottledLog:
    """A launched child's output into the run log; tqdm's redraws at most every 10 s, the rest as it comes."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, every_s: float = 10.0):
        self.logger, self.every_s, self._last = logger, every_s, 0.0

    def __call__(self, line: str) -> None:
        if "it/s" in line or "s/it" in line:
            now = time.monotonic()
            if now - self._last < self.every_s:
                return
            self._last = now
        self.logger.info(line)


def publish_eval_samples(logging_dir: Path, limit: int = 50) -> None:
    """The last eval's generated samples as a table: prompt, output, reference, scores."""
    path = logging_dir / EVAL_SAMPLES_FILE
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    last_step = rows[-1]["step"]
    table = [{k: _cell(v) for k, v in r.items()} for r in rows if r["step"] == last_step][:limit]
    create_table_artifact(table=table, key="eval-samples", description=f"Generated at step {last_step}")


def publish_summary(run: Run, data: PreparedData, trained: TrainSummary, exported: ExportedModel) -> None:
    metrics = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(trained.final_metrics.items()))
    registry = (f"`{exported.registered_name}` version {exported.version} (alias `@{exported.alias}`)"
                if exported.registered_name else "not registered")
    if exported.promotion is not None:
        decision = exported.promotion
        registry += (f"; promotion **{decision.decision}**: {decision.reason}. Load the champion with "
                     f"`mlflow.transformers.load_model(\"models:/{decision.registered_name}@{decision.champion_alias}\")`")
    create_markdown_artifact(key="run-summary", description=f"Summary of {run.name}", markdown=f"""
# SFT run `{run.name}`

**Data** ({data.source}): {data.summary()}.

**Training**: {trained.steps} steps in {trained.train_seconds:.0f} s ({trained.target_tokens_per_s:.0f} target tokens/s).

| metric | final |
| --- | --- |
{metrics}

**Model**: `{exported.model_dir}` ({', '.join(exported.files)})

**Registry**: {registry}

**MLflow run**: `{run.mlflow_run_id}` at `{redact_uri(run.config.tracking.tracking_uri or '')}`
""")


def mlflow_run_url(run: Run) -> str:
    """The run's page in the MLflow UI: the tracking server's, or a local `mlflow ui` for a sqlite store."""
    uri = run.config.tracking.tracking_uri or ""
    base = redact_uri(uri).replace("***@", "") if uri.startswith("http") else "http://127.0.0.1:5000"
    import mlflow

    experiment_id = mlflow.MlflowClient(uri).get_run(run.mlflow_run_id).info.experiment_id
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run.mlflow_run_id}"


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) or value is None else json.dumps(value)
