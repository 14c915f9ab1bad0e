"""The promotion gate (sft_core.promotion) on real registered models in a sqlite MLflow store.

One short training run is snapshotted at steps 0, 5, 10 and 20; held-out quality improves with the
steps, so the snapshots are a worse, a good and a better model for the same gate set.
"""

from __future__ import annotations

import json
import threading

import mlflow
import pytest

from conftest import tiny_config
from sft_core.config import PromotionConfig
from sft_core.errors import ConfigError
from sft_core.gate_set import GATE_DIGEST_TAG, GateSet
from sft_core.promotion import PromotionDecision, champion_version, decide, gate_metric, promote
from sft_core.registry import log_and_register
from sft_core.tracking import ensure_experiment
from sft_core.trainer import AccelerateSFTTrainer

SNAPSHOT_STEPS = (0, 5, 10, 20)


# -- the decision alone ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy, candidate, champion, mode, min_delta, promoted", [
    ("gate", 0.5, None, "max", 0.0, True),  # the first version becomes champion
    ("gate", 0.6, 0.5, "max", 0.0, True),
    ("gate", 0.5, 0.5, "max", 0.0, False),  # a tie keeps the model in service
    ("gate", 0.4, 0.5, "max", 0.0, False),
    ("gate", 0.52, 0.5, "max", 0.05, False),  # better, but by less than min_delta
    ("gate", 0.56, 0.5, "max", 0.05, True),
    ("gate", 1.0, 2.0, "min", 0.5, True),  # a loss: lower wins
    ("gate", 2.0, 1.0, "min", 0.0, False),
    ("always", 0.1, 0.9, "max", 0.0, True),
    ("never", 0.9, None, "max", 0.0, False),
])
def test_decide(policy, candidate, champion, mode, min_delta, promoted):
    decision, reason = decide(policy, candidate, champion, mode=mode, min_delta=min_delta)
    assert decision is promoted and reason


def test_the_gate_metric_defaults_to_the_runs_best_metric_and_names_the_field_it_came_from():
    scores = {"eval/loss": 1.0, "metrics/exact_match": 0.5}
    assert gate_metric(PromotionConfig(), None, scores) == "eval/loss"  # train.best_metric's own default
    assert gate_metric(PromotionConfig(), "exact_match", scores) == "metrics/exact_match"
    assert gate_metric(PromotionConfig(metric="exact_match"), "eval/loss", scores) == "metrics/exact_match"
    with pytest.raises(ConfigError, match="promotion.metric"):
        gate_metric(PromotionConfig(metric="rouge"), None, scores)
    with pytest.raises(ConfigError, match="train.best_metric"):
        gate_metric(PromotionConfig(), "rougeL", scores)


def test_the_gate_set_digest_covers_prompts_and_metrics_and_files_read_back(tmp_path):
    prompts = [{"prompt": "upper ab\n", "reference": "AB"}]
    gate = GateSet(prompts=prompts, metrics=["exact_match"], source="a")
    assert GateSet(prompts=prompts, metrics=["exact_match"], source="b").digest == gate.digest
    assert GateSet(prompts=prompts, metrics=["length"]).digest != gate.digest
    assert GateSet(prompts=[{"prompt": "upper ab\n", "reference": "Ab"}], metrics=["exact_match"]).digest != gate.digest
    assert GateSet.read(gate.write(tmp_path / "gate.json"), default_metrics=["length"]).digest == gate.digest
    lines = tmp_path / "gate.jsonl"
    lines.write_text("\n".join(json.dumps(p) for p in prompts) + "\n")
    assert GateSet.read(lines, default_metrics=["exact_match"]).digest == gate.digest
    lines.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match=r"promotion.gate_path: .*row 0 needs 'prompt' and 'reference'"):
        GateSet.read(lines, default_metrics=["exact_match"])


# -- on registered models ------------------------------------------------------------------------------------
class Snapshots(AccelerateSFTTrainer):
    """Exports the model at every eval (steps 0, 5, 10, ...)."""

    out = None

    def evaluate(self):
        result = super().evaluate()
        self.save_pretrained(self.out / f"step-{self.state.step}")
        return result


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """{step: model folder} of one 20-step run, and the run's eval prompts with references."""
    from sft_core import api

    root = tmp_path_factory.mktemp("snapshots")
    Snapshots.out = root
    config = tiny_config(root, train=dict(eval_interval=5, checkpoint_interval=20),
                         data=dict(max_eval_prompts=8), method=dict(gen_kwargs=dict(max_new_tokens=6, do_sample=False)))
    trainer = api.train(config=config, trainer_cls=Snapshots)
    prompts = trainer.evaluator.prompts
    eval_prompts = [{"prompt": t, "reference": r} for t, r in zip(prompts.texts, prompts.metadata["reference"])]
    return {step: root / f"step-{step}" for step in SNAPSHOT_STEPS}, eval_prompts, config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


def register(store: str, name: str, model_dir) -> tuple[str, str]:
    """A new version of ``name`` (with the candidate alias), from its own MLflow run: (version, model id)."""
    client = mlflow.MlflowClient(store)
    run = client.create_run(ensure_experiment("gate", store))  # artifacts beside the store, not in the cwd
    registered = log_and_register(model_dir, run_id=run.info.run_id, tracking_uri=store, registered_name=name,
                                  alias="candidate")
    client.set_terminated(run.info.run_id)
    return registered.version, registered.model_id


def gate(store, snapshots, name: str, step: int, tmp_path, **promotion) -> PromotionDecision:
    dirs, eval_prompts, config = snapshots
    version, model_id = register(store, name, dirs[step])
    config = config.evolve(promotion=promotion) if promotion else config
    return promote(config, registered_name=name, version=version, model_id=model_id, tracking_uri=store,
                   eval_prompts=eval_prompts, data_source="embedded:demo", workdir=tmp_path / f"v{version}")


def test_good_then_worse_then_better(snapshots, store, tmp_path):
    client = mlflow.MlflowClient(store)
    good = gate(store, snapshots, "seq", 10, tmp_path)
    assert good.promoted and good.reason.startswith("first version") and good.champion_version is None
    assert champion_version(client, "seq", "champion") == good.version
    stored = client.get_registered_model("seq").tags[GATE_DIGEST_TAG]
    assert stored == good.gate_digest  # the yardstick now belongs to the registered model

    worse = gate(store, snapshots, "seq", 5, tmp_path)
    assert not worse.promoted and worse.champion_version == good.version
    assert worse.metric == "eval/loss" and worse.mode == "min"
    assert worse.candidate_score > worse.champion_score  # scored on the same gate, in this call
    assert worse.champion_score == pytest.approx(good.candidate_score, abs=1e-6)
    assert champion_version(client, "seq", "champion") == good.version  # the alias did not move
    tags = client.get_model_version("seq", worse.version).tags
    assert tags["sftflow.promotion"] == "rejected" and "does not beat the champion" in tags["sftflow.promotion.reason"]
    assert float(tags["sftflow.promotion.candidate_score"]) == pytest.approx(worse.candidate_score)
    assert float(tags["sftflow.promotion.champion_score"]) == pytest.approx(worse.champion_score)
    assert tags["sftflow.gate.digest"] == stored
    assert str(client.get_model_version_by_alias("seq", "candidate").version) == worse.version  # still a candidate

    better = gate(store, snapshots, "seq", 20, tmp_path)
    assert better.promoted and better.champion_version == good.version
    assert better.candidate_score < better.champion_score
    assert champion_version(client, "seq", "champion") == better.version
    assert client.get_model_version("seq", better.version).tags["sftflow.promotion"] == "promoted"
    assert client.get_model_version("seq", good.version).tags["sftflow.replaced_by"] == better.version
    assert client.get_registered_model("seq").tags[GATE_DIGEST_TAG] == stored  # the gate never moved


def test_policy_and_min_delta(snapshots, store, tmp_path):
    first = gate(store, snapshots, "pol", 5, tmp_path, policy="never")
    assert not first.promoted and champion_version(mlflow.MlflowClient(store), "pol", "champion") is None
    forced = gate(store, snapshots, "pol", 0, tmp_path, policy="always")
    assert forced.promoted
    huge = gate(store, snapshots, "pol", 20, tmp_path, min_delta=100.0)  # better, but not by 100 nats
    assert not huge.promoted and "under promotion.min_delta" in huge.reason
    assert champion_version(mlflow.MlflowClient(store), "pol", "champion") == forced.version


def test_two_racing_promotions_leave_one_champion_and_lose_no_decision(snapshots, store, tmp_path):
    base = gate(store, snapshots, "race", 5, tmp_path)
    assert base.promoted
    entries = {step: register(store, "race", snapshots[0][step]) for step in (10, 20)}
    dirs, eval_prompts, config = snapshots
    start = threading.Barrier(2)
    decisions: dict[int, PromotionDecision] = {}
    errors: list[BaseException] = []

    def run(step: int) -> None:
        version, model_id = entries[step]
        start.wait()
        try:
            decisions[step] = promote(config, registered_name="race", version=version, model_id=model_id,
                                      tracking_uri=store, eval_prompts=eval_prompts, data_source="embedded:demo",
                                      workdir=tmp_path / f"race-{step}")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(step,)) for step in (10, 20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    first, second = sorted(decisions.values(), key=lambda d: d.champion_version != base.version)
    # One of them decided against the original champion; the other against whatever that left in place.
    assert first.champion_version == base.version and first.promoted
    assert second.champion_version == first.version, "the second decision must see the first one's outcome"
    assert champion_version(mlflow.MlflowClient(store), "race", "champion") == entries[20][0]  # the better one
    for step, (version, _) in entries.items():
        assert mlflow.MlflowClient(store).get_model_version("race", version).tags["sftflow.promotion"] in (
            "promoted", "rejected")
