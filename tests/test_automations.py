"""The notification automations of deployments/automations.py, on a real Prefect server (the test harness's runs
the server's trigger and action services): a rejected candidate and a failed sft-pipeline run each reach a real
HTTP server on localhost through a Custom Webhook block."""

from __future__ import annotations

import http.server
import json
import threading
import uuid

import pytest

from conftest import small_run, wait_for


@pytest.fixture
def webhook():
    """A real HTTP server on 127.0.0.1 that records the JSON body of every POST."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def installed(prefect_server, webhook):
    """The automations, installed twice (the second run must update, not duplicate), removed afterwards so later
    tests' failed runs notify no one."""
    from prefect.automations import Automation

    from deployments.automations import install, save_webhook_block

    block = save_webhook_block(webhook[0], name=f"notify-{uuid.uuid4().hex[:8]}")
    install(block)
    automations = install(block)
    yield automations
    for automation in automations:
        Automation.read(id=automation.id).delete()


def test_a_rejected_candidate_and_a_failed_run_each_send_a_notification(installed, webhook, tmp_path):
    from prefect.client.orchestration import get_client

    from deployments.automations import REJECTED, RUN_FAILED
    from flows.sft import sft_pipeline
    from sft_core.promotion import PromotionDecision
    from tasks.promotion import publish_decision

    with get_client(sync_client=True) as client:
        assert [len(client.read_automations_by_name(name)) for name in (REJECTED, RUN_FAILED)] == [1, 1]
    _, received = webhook

    # What the save stage publishes when the gate keeps the champion (the event sftflow.model.rejected), sent by
    # the function the save task calls; a real rejection needs two trainings, test_promotion_flow.py has those.
    model = f"notify-{uuid.uuid4().hex[:8]}"
    publish_decision(PromotionDecision(
        registered_name=model, version="2", decision="rejected", policy="gate", metric="eval/loss", mode="min",
        reason="candidate eval/loss 5.1000 does not beat the champion's 4.6000", candidate_score=5.1,
        champion_score=4.6, champion_version="1"))
    rejected = wait_for(lambda: [n for n in received if f"{model} v2" in n["subject"]], 60,
                        "the rejected candidate's notification")
    assert rejected[0]["subject"] == f"sftflow: {model} v2 rejected"
    assert "does not beat the champion's 4.6000" in rejected[0]["body"] and "champion v1 4.6" in rejected[0]["body"]

    # A real sft-pipeline run that fails (its base config file does not exist).
    state = sft_pipeline(small_run(tmp_path, config_path=str(tmp_path / "missing.yaml")), return_state=True)
    assert state.is_failed(), state
    with get_client(sync_client=True) as client:
        run_name = client.read_flow_run(state.state_details.flow_run_id).name
    failed = wait_for(lambda: [n for n in received if run_name in n["subject"]], 60, "the failed run's notification")
    assert failed[0]["subject"] == f"sftflow: sft-pipeline/{run_name} Failed"
    assert "missing.yaml" in failed[0]["body"] and str(state.state_details.flow_run_id) in failed[0]["body"]
