"""The promotion gate: does a newly registered version become the registered model's champion?

Every new version keeps the alias the save stage gave it (``candidate``); the ``champion`` alias moves
only when ``decide`` says so. Both the candidate and the current champion are scored on the same
gate set (``sft_core.gate_set``), in this process, with this run's ``gen_kwargs``. The decision is
written on the version as tags (``sftflow.promotion=promoted|rejected``, both scores, the gate digest)
and returned, so the caller can publish it too.

Two runs finishing together must leave one champion and lose no decision: the whole decision (read
champion, score, decide, move the alias) runs under a lock, a file lock beside a sqlite store plus
any lock the caller passes (the Prefect flow passes a global concurrency limit, which also covers
runs on other machines), and the alias is only moved if the champion is still the one compared with.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Literal

from pydantic import BaseModel, Field

from sft_core.config import PromotionConfig
from sft_core.errors import ConfigError, DataError, SFTError
from sft_core.evaluation import resolve_best_metric
from sft_core.gate_score import load_registered, score_model
from sft_core.gate_set import GateSet, fetch_gate, store_gate
from sft_core.registry import model_id_of

logger = logging.getLogger(__name__)

PROMOTION_TAG = "sftflow.promotion"  # promoted | rejected, on every version the gate decided
Lock = Callable[[], ContextManager[Any]]


class PromotionDecision(BaseModel):
    """What the gate decided for one version, and on what evidence."""

    registered_name: str
    version: str
    decision: Literal["promoted", "rejected"]
    reason: str
    policy: Literal["always", "gate", "never"]
    champion_alias: str = "champion"
    metric: str | None = None  # e.g. eval/loss or metrics/exact_match
    mode: Literal["max", "min"] | None = None
    min_delta: float = 0.0
    candidate_score: float | None = None
    champion_score: float | None = None
    champion_version: str | None = None  # the champion it was compared with (None: there was none)
    gate_digest: str | None = None
    gate_uri: str | None = None
    candidate_metrics: dict[str, float] = Field(default_factory=dict)
    champion_metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def tags(self) -> dict[str, str]:
        """The decision as model version tags."""
        tags = {PROMOTION_TAG: self.decision, f"{PROMOTION_TAG}.reason": self.reason,
                f"{PROMOTION_TAG}.policy": self.policy}
        optional = {"metric": self.metric, "mode": self.mode, "candidate_score": self.candidate_score,
                    "champion_score": self.champion_score, "champion_version": self.champion_version}
        tags.update({f"{PROMOTION_TAG}.{k}": str(v) for k, v in optional.items() if v is not None})
        if self.metric is not None:
            tags[f"{PROMOTION_TAG}.min_delta"] = str(self.min_delta)
        if self.gate_digest:
            tags["sftflow.gate.digest"] = self.gate_digest
            tags["sftflow.gate.uri"] = self.gate_uri or ""
        return tags


def decide(policy: str, candidate: float | None, champion: float | None, *, mode: str,
           min_delta: float) -> tuple[bool, str]:
    """(promote?, why). The candidate must beat the champion by more than 0 and by at least min_delta
    in the metric's direction: a tie keeps the model already in service."""
    if policy == "never":
        return False, "promotion.policy is 'never'"
    if policy == "always":
        return True, "promotion.policy is 'always'"
    if champion is None:
        return True, "first version: there is no champion yet"
    gain = (candidate - champion) if mode == "max" else (champion - candidate)
    if gain > 0 and gain >= min_delta:
        return True, f"beats the champion by {gain:.6g} ({mode}; min_delta {min_delta:g})"
    scores = f"{candidate:.6g} vs the champion's {champion:.6g}, {mode} is better"
    if gain <= 0:
        return False, f"does not beat the champion ({scores})"
    return False, f"beats the champion by only {gain:.6g}, under promotion.min_delta {min_delta:g} ({scores})"


def gate_metric(promotion: PromotionConfig, best_metric: str | None, scores: dict[str, float]) -> str:
    """promotion.metric (bare or metrics/NAME), else train.best_metric by best/'s rule (eval/loss if unset)."""
    configured = promotion.metric or best_metric
    field = "promotion.metric" if promotion.metric else "train.best_metric"
    if configured is None:
        return resolve_best_metric(None, scores) or "eval/loss"
    for name in (configured, f"metrics/{configured}"):
        if name in scores:
            return name
    raise ConfigError(field, f"{configured!r} is not scored on the gate set (it scores {sorted(scores)}); "
                             "set promotion.metric to one of these")


def gate_mode(promotion: PromotionConfig, best_mode: str | None, metric: str) -> str:
    """promotion.mode, else train.best_mode (only with train.best_metric, which it goes with), else min
    for a loss and max for anything else."""
    best_mode = None if promotion.metric else best_mode
    return promotion.mode or best_mode or ("min" if "loss" in metric else "max")


def promote(config: Any, *, registered_name: str, version: str, model_id: str, tracking_uri: str,
            eval_prompts: list[Any] | None, data_source: str, workdir: str | Path,
            lock: Lock | None = None) -> PromotionDecision:
    """Decide whether ``version`` becomes the champion, move the alias if so, and tag the version.

    ``config``: the run's TRLConfig (promotion, method, train sections). ``eval_prompts``: the run's,
    from which the gate set is made when the registered model has none yet (and promotion.gate_path
    is unset). ``lock``: an extra lock to hold around the decision (e.g. a Prefect concurrency limit)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    with contextlib.ExitStack() as held:
        if lock is not None:
            held.enter_context(lock())
        held.enter_context(registry_lock(tracking_uri, registered_name))
        decision = _decide_and_apply(client, config, registered_name, version, model_id, tracking_uri,
                                     eval_prompts, data_source, Path(workdir))
    logger.info("Promotion of %s v%s: %s (%s)", registered_name, version, decision.decision, decision.reason)
    return decision


def _decide_and_apply(client: Any, config: Any, name: str, version: str, model_id: str, tracking_uri: str,
                      eval_prompts: list[Any] | None, data_source: str, workdir: Path) -> PromotionDecision:
    promotion: PromotionConfig = config.promotion
    alias = promotion.champion_alias
    base = dict(registered_name=name, version=version, policy=promotion.policy, champion_alias=alias,
                min_delta=promotion.min_delta)
    champion = champion_version(client, name, alias)
    if champion == version:  # a retried save stage: this version won already
        return _record(client, PromotionDecision(**base, decision="promoted", reason="already the champion",
                                                 champion_version=champion))
    if promotion.policy == "never":
        return _record(client, PromotionDecision(**base, decision="rejected", reason="promotion.policy is 'never'",
                                                 champion_version=champion))
    try:
        gate, gate_uri, stored = _gate_for(client, config, name, tracking_uri, eval_prompts, data_source)
    except DataError as err:  # no references to score on
        return _record(client, _without_gate(client, PromotionDecision(
            **base, decision="rejected", champion_version=champion, reason=str(err))))
    candidate_scores = _score(name, version, tracking_uri, gate, config)
    metric = gate_metric(promotion, config.train.best_metric, candidate_scores)
    mode = gate_mode(promotion, config.train.best_mode, metric)
    scored: dict[str, dict[str, float]] = {}
    for _ in range(5):  # compare-and-set: re-decide if another writer moved the alias meanwhile
        if champion is not None and champion not in scored:
            scored[champion] = _score(name, champion, tracking_uri, gate, config)
        champion_scores = scored.get(champion, {}) if champion else {}
        if champion_scores and metric not in champion_scores:
            raise ConfigError("promotion.metric", f"{metric!r} is not scored for the champion v{champion}")
        promote_it, reason = decide(promotion.policy, candidate_scores[metric], champion_scores.get(metric),
                                    mode=mode, min_delta=promotion.min_delta)
        now = champion_version(client, name, alias)
        if now != champion:
            champion = now
            continue
        if not stored:  # the first gate set of this registered model: beside the champion's model
            holder = model_id if promote_it or champion is None else logged_model_id(client, name, champion)
            gate_uri = store_gate(client, name, holder, gate, workdir)
        decision = PromotionDecision(
            **base, decision="promoted" if promote_it else "rejected", reason=reason, metric=metric, mode=mode,
            candidate_score=candidate_scores[metric], champion_score=champion_scores.get(metric),
            champion_version=champion, gate_digest=gate.digest, gate_uri=gate_uri,
            candidate_metrics=candidate_scores, champion_metrics=champion_scores)
        if promote_it:
            client.set_registered_model_alias(name, alias, version)
            if champion is not None:
                client.set_model_version_tag(name, champion, "sftflow.replaced_by", version)
        return _record(client, decision)
    raise SFTError(f"promotion of {name} v{version}: the {alias} alias kept moving under us; run with a lock "
                   "(a sqlite store or the Prefect flow's concurrency limit)")


def _without_gate(client: Any, decision: PromotionDecision) -> PromotionDecision:
    """No gate set could be made: the first version (or any, with policy always) still becomes champion;
    later ones cannot win, and the reason says how to give them a gate set."""
    if decision.champion_version is not None and decision.policy != "always":
        return decision.model_copy(update=dict(reason=f"no gate set to compare on; {decision.reason}"))
    _, why = decide(decision.policy, None, None, mode="max", min_delta=0.0)
    client.set_registered_model_alias(decision.registered_name, decision.champion_alias, decision.version)
    return decision.model_copy(update=dict(decision="promoted", reason=f"{why}; {decision.reason}"))


def _gate_for(client: Any, config: Any, name: str, tracking_uri: str, eval_prompts: list[Any] | None,
              data_source: str) -> tuple[GateSet, str | None, bool]:
    """(gate set, its URI, whether it is stored already): promotion.gate_path, else the registered
    model's stored one, else a new one from this run's eval prompts (stored once decided)."""
    promotion: PromotionConfig = config.promotion
    if promotion.gate_path:
        return GateSet.read(promotion.gate_path, default_metrics=config.method.metrics), promotion.gate_path, True
    fetched = fetch_gate(client, name, tracking_uri)
    if fetched is not None:
        return fetched[0], fetched[1], True
    return GateSet.from_eval_prompts(eval_prompts, metrics=config.method.metrics, source=data_source), None, False


def _score(name: str, version: str, tracking_uri: str, gate: GateSet, config: Any) -> dict[str, float]:
    model, tokenizer = load_registered(name, version, tracking_uri)
    scores = score_model(model, tokenizer, gate, config.method, seed=config.train.seed)
    logger.info("Gate scores of %s v%s: %s", name, version, ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    return scores


def _record(client: Any, decision: PromotionDecision) -> PromotionDecision:
    for key, value in decision.tags().items():
        client.set_model_version_tag(decision.registered_name, decision.version, key, value)
    return decision


def logged_model_id(client: Any, name: str, version: str) -> str:
    """The LoggedModel behind a version (a sqlite registry keeps it only in the source, models:/m-...)."""
    found = client.get_model_version(name, version)
    return found.model_id or model_id_of(found.source)


def champion_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:  # no such alias (yet)
        return None


@contextlib.contextmanager
def registry_lock(tracking_uri: str, registered_name: str) -> Iterator[None]:
    """Serializes promotions of one registered model between processes on this machine (a sqlite
    store); for a tracking server, the caller's lock and the compare-and-set above have to do."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    import hashlib

    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(registered_name.encode()).hexdigest()[:12]  # any model name makes a valid file name
    with open(db.with_name(f"{db.name}.promotion-{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # per open file: threads of one process exclude each other too
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
