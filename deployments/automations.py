"""Notifications as Prefect automations: a rejected candidate, and a failed or crashed run of sft-pipeline.

    python -m deployments.automations --webhook-url https://hooks.example/T000/B000   # a Custom Webhook block
    python -m deployments.automations --block slack-webhook/team-alerts             # any notification block

Both automations send through one notification block. ``--webhook-url`` saves a Custom Webhook block named
``sftflow-notify`` that POSTs ``{"text": ..., "subject": ..., "body": ...}`` (Slack-style incoming webhooks read
``text``); ``--block TYPE/NAME`` uses a block you made (``prefect block ls`` lists them). Running it again updates
the automations and the block in place, so it is safe to re-run, e.g. after changing the URL.
The server's automation services (``prefect server start`` runs them) do the sending: nothing here runs per event.
"""

from __future__ import annotations

import argparse
import sys
from uuid import UUID

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

FLOW_NAME = "sft-pipeline"
WEBHOOK_BLOCK = "sftflow-notify"
REJECTED = "sftflow: candidate rejected"
RUN_FAILED = "sftflow: sft-pipeline run failed"


def definitions(block_document_id: UUID) -> list[Automation]:
    """The automations, each sending through the notification block ``block_document_id``.

    Templates are Jinja rendered by the server: ``event`` is the triggering event; for a flow-run event
    ``flow_run`` and ``flow`` are the run and its flow."""
    rejected = Automation(
        name=REJECTED,
        description="The promotion gate kept the champion: the new version stays @candidate (tasks/promotion.py).",
        trigger=EventTrigger(expect={"sftflow.model.rejected"}, match={"prefect.resource.id": "mlflow.model-version.*"},
                             posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="sftflow: {{ event.resource.name }} rejected",
            body="{{ event.resource.name }} was not promoted: {{ event.payload.reason }}. "
                 "{{ event.payload.metric }}: candidate {{ event.payload.candidate_score }}, champion "
                 "v{{ event.payload.champion_version }} {{ event.payload.champion_score }}.")],
    )
    failed = Automation(
        name=RUN_FAILED,
        description=f"A run of the {FLOW_NAME} flow (any deployment, or a local run) ended Failed or Crashed.",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                             match={"prefect.resource.id": "prefect.flow-run.*"},
                             match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
                             posture=Posture.Reactive, threshold=1, within=0),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="sftflow: {{ flow.name }}/{{ flow_run.name }} {{ flow_run.state.name }}",
            body="Flow run {{ flow.name }}/{{ flow_run.name }} (id {{ flow_run.id }}) ended "
                 "{{ flow_run.state.name }}: {{ flow_run.state.message }}")],
    )
    return [rejected, failed]


def install(block_document_id: UUID) -> list[Automation]:
    """Create the automations, or update the ones of the same name: one of each, however often it runs."""
    installed = []
    for automation in definitions(block_document_id):
        try:
            existing = Automation.read(name=automation.name)
        except ValueError:  # none of that name
            installed.append(automation.create())
            continue
        automation.id = existing.id
        automation.update()
        installed.append(automation)
    return installed


def save_webhook_block(url: str, name: str = WEBHOOK_BLOCK) -> UUID:
    """A Custom Webhook notification block POSTing the notification as JSON to ``url`` (saved, or overwritten)."""
    block = CustomWebhookNotificationBlock(
        name=name, url=url, json_data={"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"})
    return block.save(name, overwrite=True)


def block_id(slug: str) -> UUID:
    """The document id of a saved notification block, from ``TYPE/NAME`` (e.g. ``slack-webhook/team-alerts``)."""
    if "/" not in slug:
        raise SystemExit(f"--block {slug!r}: give the block as TYPE/NAME, e.g. slack-webhook/{slug} "
                         "(`prefect block ls` lists them)")
    try:
        block = Block.load(slug)
    except ValueError as err:
        raise SystemExit(f"--block {slug!r}: {err}") from err
    if not hasattr(block, "notify"):
        raise SystemExit(f"--block {slug!r} is not a notification block (Slack, Custom Webhook, email, ...)")
    return block._block_document_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.automations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook-url", help=f"POST notifications here (saves the block {WEBHOOK_BLOCK!r})")
    target.add_argument("--block", metavar="TYPE/NAME", help="an existing notification block")
    args = parser.parse_args(argv)
    document_id = save_webhook_block(args.webhook_url) if args.webhook_url else block_id(args.block)
    for automation in install(document_id):
        print(f"automation {automation.name!r}: {automation.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
