"""The Prefect API server a local run (`python -m flows.sft`) starts when no PREFECT_API_URL is set.

Prefect would start the same temporary server itself at the first flow call, after this process
has imported torch & co. and Prefect's server modules (2-3 s of imports this process never uses).
Launched from the first line instead, it boots (4-11 s, its own process) while those imports run,
and PREFECT_API_URL points Prefect's client at it. It dies with this process.

Its background services (scheduler, late-run and pause sweeps, automations...) serve deployments
and workers, which a one-off local run has none of; turned off, they stop taking CPU from training.
A real server (PREFECT_API_URL set by the user) is used as it is.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

IDLE_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "REPOSSESSOR", "CANCELLATION_CLEANUP",
                 "TRIGGERS", "CLEANUP_RECONCILER")
PORT_IN_USE_EXIT_CODE = 3  # uvicorn's exit code when it cannot bind


def use_lean_temporary_server() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network to send telemetry to
    if os.environ.get("PREFECT_API_URL"):
        return
    for service in IDLE_SERVICES:
        os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")
    # Block types are registered for block-using flows (this one uses none); a real server registers them.
    os.environ.setdefault("PREFECT_API_BLOCKS_REGISTER_ON_START", "false")


class TemporaryServer:
    """Prefect's API (no UI) in a child process on a free local port, stopped at exit."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._launch()
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> None:
        with socket.socket() as probe:  # a free port (Prefect's own server picks one the same way)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        site_packages = Path(importlib.util.find_spec("prefect").origin).parent.parent  # no import of prefect
        # The command and settings Prefect's own temporary server (SubprocessASGIServer) runs with.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(site_packages), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1"},
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def wait_until_up(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == PORT_IN_USE_EXIT_CODE:  # the port was taken meanwhile: another one
                self._launch()
            elif code is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {code} while starting")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_temporary_server_early() -> TemporaryServer | None:
    """Call before importing prefect, then ``.wait_until_up()`` before the first flow call.
    Returns None where a real server (PREFECT_API_URL) is configured."""
    use_lean_temporary_server()
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = TemporaryServer()
    os.environ["PREFECT_API_URL"] = server.api_url  # read by Prefect's settings when it is imported
    os.environ.setdefault("PREFECT_UI_URL", "")  # this server serves no UI, so log no links to one
    return server


def _die_with_parent() -> None:
    """In the child, before exec (Linux): get SIGTERM when the parent dies, even by SIGKILL."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
