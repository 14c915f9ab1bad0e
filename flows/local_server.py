"""Lean settings for the temporary Prefect server a local run starts when no PREFECT_API_URL is set.

That server shares the machine with training. Its background services (scheduler, late-run and
pause sweeps, automations...) serve deployments and workers, which a one-off local run has none
of; turned off, they stop taking CPU from training. A real server (PREFECT_API_URL) is untouched.
"""

from __future__ import annotations

import os
import threading

IDLE_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "REPOSSESSOR", "CANCELLATION_CLEANUP",
                 "TRIGGERS", "CLEANUP_RECONCILER")


def use_lean_temporary_server() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network to send telemetry to
    if os.environ.get("PREFECT_API_URL"):
        return
    for service in IDLE_SERVICES:
        os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")
    # Block types are registered for block-using flows (this one uses none); a real server registers them.
    os.environ.setdefault("PREFECT_API_BLOCKS_REGISTER_ON_START", "false")


def start_temporary_server_early() -> threading.Thread | None:
    """Start the temporary server in a background thread, so that it boots (10-20 s, in a process of
    its own) while this process imports torch & co.; call ``.join()`` on the result before the first
    flow call. Returns None where a real server (PREFECT_API_URL) is configured."""
    use_lean_temporary_server()
    if os.environ.get("PREFECT_API_URL"):
        return None

    from prefect.server.api.server import SubprocessASGIServer  # imported here, so the thread launches it at once

    # The singleton instance that Prefect's client finds and reuses.
    thread = threading.Thread(target=SubprocessASGIServer().start, name="prefect-temporary-server", daemon=True)
    thread.start()
    return thread
