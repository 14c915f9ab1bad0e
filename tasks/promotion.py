"""The promotion gate's Prefect side: a lock every run shares, and the decision as an artifact and an event.

The event (``sftflow.model.promoted`` / ``sftflow.model.rejected``, resource: the model version) is what
automations and deployment triggers react to, e.g. a notification on a rejected candidate.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from sft_core.promotion import PromotionDecision
from tasks.concurrency import hold

PROMOTION_LIMIT_PREFIX = "sftflow-promotion-"  # + the registered model's name: one decision at a time per model


@contextlib.contextmanager
def promotion_lock(registered_name: str) -> Iterator[None]:
    """One slot of a Prefect global concurrency limit (limit 1) per registered model, created when missing:
    runs on different machines, sharing one MLflow server, then decide one after the other."""
    with hold(PROMOTION_LIMIT_PREFIX + registered_name):
        yield


def decision_resource(decision: PromotionDecision) -> dict[str, str]:
    """The model version as a Prefect event resource."""
    return {
        "prefect.resource.id": f"mlflow.model-version.{decision.registered_name}.{decision.version}",
        "prefect.resource.name": f"{decision.registered_name} v{decision.version}",
        "mlflow.registered_model": decision.registered_name,
        "mlflow.model_version": decision.version,
    }


def publish_decision(decision: PromotionDecision) -> None:
    """The decision as a markdown artifact and as the event ``sftflow.model.<promoted|rejected>``."""
    emit_event(
        event=f"sftflow.model.{decision.decision}",
        resource=decision_resource(decision),
        related=[{"prefect.resource.id": f"mlflow.registered-model.{decision.registered_name}",
                  "prefect.resource.role": "registered-model", "prefect.resource.name": decision.registered_name}],
        payload=decision.model_dump(mode="json"),
    )
    create_markdown_artifact(key="promotion", description=f"Promotion of {decision.registered_name} "
                             f"v{decision.version}: {decision.decision}", markdown=decision_markdown(decision))


def decision_markdown(decision: PromotionDecision) -> str:
    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    names = sorted(set(decision.candidate_metrics) | set(decision.champion_metrics))
    rows = "\n".join(f"| `{n}` | {score(decision.candidate_metrics.get(n))} | "
                     f"{score(decision.champion_metrics.get(n))} |" for n in names)
    champion = f"v{decision.champion_version}" if decision.champion_version else "none"
    table = f"| gate metric | candidate v{decision.version} | champion {champion} |\n| --- | ---: | ---: |\n{rows}"
    uri = f"models:/{decision.registered_name}@{decision.champion_alias}"
    return f"""# {decision.registered_name} v{decision.version}: **{decision.decision}**

{decision.reason}.

Policy `{decision.policy}`, metric `{decision.metric or '-'}` ({decision.mode or '-'}), min_delta {decision.min_delta:g};
gate set `{(decision.gate_digest or '-')[:12]}` at `{decision.gate_uri or '-'}`.

{table if names else ''}

The champion is loaded with `mlflow.transformers.load_model("{uri}")`.
"""
