"""The gate set: the fixed yardstick a registered model's versions are compared on.

It holds eval prompts with their references and the metric names to score them with. By default it
is made once, from the eval prompts of the run that made the first champion, and stored beside that
model in MLflow (an artifact of its logged model, found through the registered model's tags), so
new training data never moves it. Its digest covers what decides a score: prompts and metrics.

    gate = GateSet.from_eval_prompts(prompts, metrics=["exact_match"], source="demo")
    gate.digest              # sha256 of the prompts and metrics
    store_gate(client, "sftflow-demo", model_id, gate, workdir)   # once, for the first champion
    stored = fetch_gate(client, "sftflow-demo", tracking_uri)      # later runs; None if none yet
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from sft_core.errors import ConfigError, DataError, SFTError

logger = logging.getLogger(__name__)

GATE_FILE = "gate_set.json"
GATE_ARTIFACT_DIR = "sftflow"  # in the logged model's artifacts, beside the model itself
GATE_URI_TAG = "sftflow.gate.uri"  # on the registered model
GATE_DIGEST_TAG = "sftflow.gate.digest"


class GateSet(BaseModel):
    prompts: list[dict[str, Any]] = Field(min_length=1)  # {"prompt": str | chat messages, "reference": str, ...}
    metrics: list[str] = Field(min_length=1)  # metric names or "module:function", as method.metrics
    source: str = ""  # where the prompts came from (not part of the digest)

    @property
    def digest(self) -> str:
        canonical = json.dumps({"prompts": self.prompts, "metrics": self.metrics}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_eval_prompts(cls, prompts: list[Any] | None, *, metrics: list[str], source: str) -> GateSet:
        """The run's eval prompts as a gate set; only prompts with a reference can be scored on a reference."""
        usable = [p for p in prompts or [] if isinstance(p, dict) and "prompt" in p and "reference" in p]
        if not usable:
            raise DataError("promotion: the run has no eval prompts with references to make a gate set from; "
                            "set promotion.gate_path to a JSON/JSONL file of {\"prompt\", \"reference\"} rows",
                            source=source)
        return cls(prompts=usable, metrics=list(metrics), source=source)

    @classmethod
    def read(cls, path: str | Path, *, default_metrics: list[str]) -> GateSet:
        """A gate file: our own JSON ({"prompts": [...], "metrics": [...]}), a JSON list of prompt rows, or
        JSONL with one prompt row per line. Without metrics in the file, ``default_metrics`` score it."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError("promotion.gate_path", f"no such file: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            raw: Any = ([json.loads(line) for line in text.splitlines() if line.strip()]
                        if path.suffix == ".jsonl" else json.loads(text))
        except json.JSONDecodeError as err:
            raise ConfigError("promotion.gate_path", f"{path}: not valid JSON{'L' if path.suffix == '.jsonl' else ''}: "
                                                     f"{err}") from None
        if isinstance(raw, list):
            raw = {"prompts": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("prompts"), list):
            raise ConfigError("promotion.gate_path", f"{path}: expected a list of prompt rows or {{\"prompts\": [...]}}")
        bad = [i for i, p in enumerate(raw["prompts"]) if not (isinstance(p, dict) and {"prompt", "reference"} <= set(p))]
        if bad:
            raise ConfigError("promotion.gate_path", f"{path}: row {bad[0]} needs 'prompt' and 'reference' keys")
        return cls(prompts=raw["prompts"], metrics=raw.get("metrics") or list(default_metrics),
                   source=raw.get("source") or str(path))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        return path


def store_gate(client: Any, registered_name: str, model_id: str, gate: GateSet, workdir: str | Path) -> str:
    """Save the gate set beside a logged model and point the registered model at it; returns its URI."""
    local = gate.write(Path(workdir) / GATE_FILE)
    client.log_model_artifact(model_id, str(local), GATE_ARTIFACT_DIR)
    uri = f"{client.get_logged_model(model_id).artifact_location.rstrip('/')}/{GATE_ARTIFACT_DIR}/{GATE_FILE}"
    client.set_registered_model_tag(registered_name, GATE_URI_TAG, uri)
    client.set_registered_model_tag(registered_name, GATE_DIGEST_TAG, gate.digest)
    logger.info("Gate set of %s (%d prompts, digest %s) stored at %s", registered_name, len(gate.prompts),
                gate.digest[:12], uri)
    return uri


def fetch_gate(client: Any, registered_name: str, tracking_uri: str) -> tuple[GateSet, str] | None:
    """The registered model's stored gate set and its URI, checked against the digest recorded with it;
    None when the model has none yet."""
    import mlflow.artifacts

    tags = client.get_registered_model(registered_name).tags
    uri = tags.get(GATE_URI_TAG)
    if not uri:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri)
        gate = GateSet.model_validate_json(Path(local).read_text(encoding="utf-8"))
    if gate.digest != tags.get(GATE_DIGEST_TAG):
        raise SFTError(f"the gate set of {registered_name} at {uri} has digest {gate.digest[:12]}, but "
                        f"{tags.get(GATE_DIGEST_TAG, '?')[:12]} was recorded: it was changed after it was stored")
    return gate, uri
