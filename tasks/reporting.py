"""What the Prefect UI shows about a run: a live progress bar, eval samples, a markdown summary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact

from sft_core.tracking import redact_uri
from tasks.artifacts import ExportedModel, PreparedData, RunConfig, TrainResult


class TrainingProgress:
    """Percent of optimizer steps done, updated at most every ``min_interval_s`` seconds."""

    def __init__(self, total_steps: int, metrics_path: Path, min_interval_s: float = 5.0):
        self.total_steps = total_steps
        self.metrics_path = metrics_path
        self.min_interval_s = min_interval_s
        self._last_update = 0.0
        self._offset = 0
        self.artifact_id = create_progress_artifact(progress=0.0, key="training-progress",
                                                    description="Optimizer steps done, in percent")

    def on_event(self, event: str, payload: dict[str, Any]) -> None:
        """sft_core trainer callback (in-process training)."""
        if event == "log":
            self.update(payload["step"])
        elif event == "end":
            self.update(payload["steps"], force=True)

    def poll(self) -> None:
        """Child-process training: read new lines of metrics.jsonl."""
        if time.monotonic() - self._last_update < self.min_interval_s or not self.metrics_path.exists():
            return
        with self.metrics_path.open() as f:
            f.seek(self._offset)
            new = f.read()
        complete, _, _ = new.rpartition("\n")
        self._offset += len(complete) + 1 if complete else 0
        steps = [json.loads(line)["step"] for line in complete.splitlines() if line.strip()]
        if steps:
            self.update(max(steps))

    def update(self, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_update >= self.min_interval_s:
            self._last_update = now
            update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * step / max(self.total_steps, 1)))


def publish_eval_samples(logging_dir: Path, limit: int = 50) -> None:
    """The last eval's generated samples as a table: prompt, output, reference, scores."""
    path = logging_dir / "eval_samples.jsonl"
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    last_step = rows[-1]["step"]
    table = [{k: _cell(v) for k, v in r.items()} for r in rows if r["step"] == last_step][:limit]
    create_table_artifact(table=table, key="eval-samples", description=f"Generated at step {last_step}")


def publish_summary(run: RunConfig, data: PreparedData, trained: TrainResult, exported: ExportedModel) -> None:
    metrics = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(trained.final_metrics.items()))
    dropped = ", ".join(f"{n} {why}" for why, n in data.dropped_rows.items()) or "none"
    registry = (f"`{exported.registered_name}` version {exported.version} (alias `@{exported.alias}`), "
                f"load with `mlflow.transformers.load_model(\"models:/{exported.registered_name}@{exported.alias}\")`"
                if exported.registered_name else "not registered")
    create_markdown_artifact(key="run-summary", description=f"Summary of {run.run_name}", markdown=f"""
# SFT run `{run.run_name}`

**Data** ({data.source}): {data.train_rows} training rows ({data.target_tokens} target tokens),
{data.eval_rows} held-out rows, {data.eval_prompts} eval prompts; {data.truncated_rows} truncated; dropped: {dropped}.

**Training**: {trained.steps} steps in {trained.train_seconds:.0f} s ({trained.target_tokens_per_s:.0f} target tokens/s).

| metric | final |
| --- | --- |
{metrics}

**Model**: `{exported.model_dir}` ({', '.join(exported.files)})

**Registry**: {registry}

**MLflow run**: `{run.mlflow_run_id}` at `{redact_uri(run.tracking_uri)}`
""")


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) or value is None else json.dumps(value)
