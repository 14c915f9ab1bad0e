"""The save stage end to end: a Prefect test server, a sqlite MLflow store, two short real runs.

The first run becomes champion; a worse one (fewer steps) is registered but rejected, and the tags,
the markdown artifact and the Prefect event say why. Both logged models carry their final metrics.
"""

from __future__ import annotations

import subprocess

import mlflow

from conftest import ROOT, flow_run_artifacts, settled, small_run
from flows.sft import sft_pipeline
from sft_core.data.sources import fingerprint_source
from sft_core.promotion import logged_model_id


def promotion_events(name: str, ready_count: int) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter

    async def read(client):
        page = await client.read_events(filter=EventFilter(event=EventNameFilter(prefix=["sftflow.model."])), limit=50)
        return [e for e in page.events if e.resource.get("mlflow.registered_model") == name]
    return settled(read, lambda events: len(events) >= ready_count)


def test_a_good_run_becomes_champion_and_a_worse_one_is_rejected(prefect_server, tmp_path):
    overrides = {"data.num_demo_rows": 600, "data.max_eval_prompts": 8, "train.batch_size": 16,
                 "train.checkpoint_interval": 12, "method.gen_kwargs": {"max_new_tokens": 6, "do_sample": False}}
    good = sft_pipeline(small_run(tmp_path, total_steps=12, eval_interval=6, registered_model_name="gated",
                                  overrides=overrides), return_state=True)
    assert good.is_completed(), good
    first = good.result()
    assert first.promotion == "promoted" and first.version == "1"

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("gated", "champion").version) == "1"
    version = client.get_model_version("gated", "1")
    tags = version.tags
    assert tags["sftflow.promotion"] == "promoted" and tags["sftflow.promotion.reason"].startswith("first version")
    assert tags["prefect.flow_run_id"] == str(good.state_details.flow_run_id)
    assert tags["sftflow.base_model"] == "embedded:tiny-llama" and tags["sftflow.data.path"] == "embedded:demo"
    assert len(tags["sftflow.config.digest"]) == 64 and tags["sftflow.data.digest"] == fingerprint_source("embedded:demo")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["sftflow.git.commit"].startswith(head)

    # The logged model behind the version carries the metrics of step 12, not the untrained step 0; so do
    # the version's tags.
    logged = {m.key: m for m in client.get_logged_model(logged_model_id(client, "gated", "1")).metrics}
    history = {m.step: m.value for m in client.get_metric_history(first.mlflow_run_id, "eval/loss")}
    assert sorted(history) == [0, 6, 12]
    assert logged["eval/loss"].step == 12 and logged["eval/loss"].value == first.final_metrics["eval/loss"]
    assert logged["eval/loss"].value < history[0]
    assert logged["metrics/exact_match"].value == first.final_metrics["metrics/exact_match"]
    assert logged["metrics/exact_match"].step == 12
    assert tags["sftflow.metrics_step"] == "12"
    assert float(tags["sftflow.metric.eval/loss"]) == first.final_metrics["eval/loss"]
    assert float(tags["sftflow.metric.metrics/exact_match"]) == first.final_metrics["metrics/exact_match"]

    # Lineage: the source data and the eval set are inputs of the run, with digests.
    inputs = client.get_run(first.mlflow_run_id).inputs.dataset_inputs
    by_context = {(i.tags[0].value, i.dataset.name): i.dataset for i in inputs}
    assert ("training", "embedded:demo") in by_context and ("evaluation", "eval-prompts") in by_context
    assert all(d.digest for d in by_context.values())

    worse = sft_pipeline(small_run(tmp_path, total_steps=5, eval_interval=5, registered_model_name="gated",
                                   overrides={**overrides, "train.checkpoint_interval": 5}), return_state=True)
    assert worse.is_completed(), worse
    second = worse.result()
    assert second.promotion == "rejected" and second.version == "2"
    assert str(client.get_model_version_by_alias("gated", "champion").version) == "1"  # unchanged
    assert str(client.get_model_version_by_alias("gated", "candidate").version) == "2"
    tags = client.get_model_version("gated", "2").tags
    assert tags["sftflow.promotion"] == "rejected" and tags["sftflow.promotion.champion_version"] == "1"
    assert float(tags["sftflow.promotion.candidate_score"]) > float(tags["sftflow.promotion.champion_score"])
    assert tags["sftflow.gate.digest"] == client.get_model_version("gated", "1").tags["sftflow.gate.digest"]

    events = {e.event: e for e in promotion_events("gated", 2)}
    assert set(events) == {"sftflow.model.promoted", "sftflow.model.rejected"}
    rejected = events["sftflow.model.rejected"]
    assert rejected.resource.id == "mlflow.model-version.gated.2" and rejected.resource["mlflow.model_version"] == "2"
    assert "does not beat the champion" in rejected.payload["reason"]
    assert rejected.payload["champion_version"] == "1"

    artifacts = flow_run_artifacts(worse.state_details.flow_run_id, lambda found: any(a.key == "promotion" for a in found))
    (artifact,) = [a for a in artifacts if a.key == "promotion"]
    assert "**rejected**" in artifact.data and "does not beat the champion" in artifact.data
