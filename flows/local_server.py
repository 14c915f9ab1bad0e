"""The Prefect server a local run (`python -m flows.sft`) reports to.

A server Prefect's settings name (PREFECT_API_URL in the environment, the active profile or
prefect.toml) is used as it is. With none, Prefect runs a temporary server of its own: its
`SubprocessASGIServer`, a child process on a free loopback port, started at the first API call and
stopped at exit. Here that same server is started from the run's first line, in a thread, so it
boots while torch & co. import; Prefect's client finds it already running, as it keeps one such
server per process (`SubprocessASGIServer()` returns the same instance).

Prefect stops its server at exit, but not when the run is killed (SIGKILL, OOM killer). A watchdog
process learns the server's pid and terminates it when this process is gone: its stdin is a pipe
from this process, and the pipe's end of file is that moment, whatever the cause.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time

# Public settings read by the temporary server. In Prefect 3.9 a temporary ("ephemeral") server runs
# only the services marked for it: the task-run recorder, event persister and event stream,
# automations (reactive and proactive triggers, actions), a telemetry heartbeat and event vacuum.
# The scheduler, late-run, pause-expiration, foreman, repossessor, cancellation and cleanup services
# never run there (server/services/*: run_in_ephemeral), so switches for those would change nothing.
LEAN_SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # its telemetry heartbeat: there is no network to send it to
    # Automations: a server that lives for one run has none, yet its triggers service reads every event
    # and re-evaluates proactive triggers every few seconds (its actions service goes off with it).
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    # Block types are registered for flows that use blocks (this one uses none): seconds on a new
    # PREFECT_HOME (later starts skip it anyway); a real server registers them itself.
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
}

STARTUP_TIMEOUT_S = 120

# Runs with this process's pipe as stdin: each line is a server pid to guard, "done" means this
# process stops the server itself; end of file without "done" means this process is gone.
WATCHDOG = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the run handles it
pids = set()
for line in sys.stdin:
    if line.strip() == "done":
        sys.exit()
    pids.add(int(line))
for pid in pids:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
"""


class TemporaryServer:
    """Prefect's temporary server, booting in a thread, with a watchdog for when this process is killed."""

    def __init__(self, startup_timeout_s: int) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.server = None  # prefect's SubprocessASGIServer, once its module is imported
        self._error: BaseException | None = None
        self._booted = threading.Event()
        self._watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", WATCHDOG], stdin=subprocess.PIPE,
                                          text=True)
        atexit.register(self._release_watchdog)
        threading.Thread(target=self._start, name="prefect-temporary-server", daemon=True).start()
        threading.Thread(target=self._report_pids, name="prefect-server-watchdog", daemon=True).start()

    @property
    def api_url(self) -> str:
        return self.server.api_url

    @property
    def pid(self) -> int:
        return self.server.server_process.pid

    def _start(self) -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer  # 2-3 s of imports, off the main thread

            self.server = SubprocessASGIServer()  # the instance Prefect's client starts when no API URL is set
            self.server.start(timeout=self.startup_timeout_s)  # returns once /health answers
        except BaseException as error:  # noqa: BLE001 - re-raised in wait_until_up, on the main thread
            self._error = error
        finally:
            self._booted.set()

    def _report_pids(self) -> None:
        """Tell the watchdog each server process Prefect launches (it launches another on a port taken meanwhile)."""
        reported = None
        while True:
            booted = self._booted.is_set()  # read first: a launch before it is seen by the check below
            process = getattr(self.server, "server_process", None)
            if process is not None and process.pid != reported:
                reported = process.pid
                try:
                    self._watchdog.stdin.write(f"{reported}\n")
                    self._watchdog.stdin.flush()
                except (OSError, ValueError):  # the watchdog is gone, or this process is exiting
                    return
            if booted:
                return
            time.sleep(0.05)

    def wait_until_up(self) -> None:
        """Block until the server answers; call before the first flow call."""
        self._booted.wait()
        if self._error is not None:
            raise RuntimeError(f"Prefect's temporary server did not start: {self._error}") from self._error

    def _release_watchdog(self) -> None:
        """At exit. Once started, the server was stopped by Prefect's own atexit hook (it runs before this
        one); one still booting (an exit during the imports) is left to the watchdog."""
        stopped_by_prefect = self._booted.is_set() and getattr(self.server, "server_process", 1) is None
        try:
            if stopped_by_prefect:
                self._watchdog.stdin.write("done\n")
            self._watchdog.stdin.close()
        except (OSError, ValueError):
            pass
        self._watchdog.wait()


def start_temporary_server_early() -> TemporaryServer | None:
    """Call first thing, then ``.wait_until_up()`` before the first flow call. Returns None where
    Prefect's settings name a server, or ephemeral servers are turned off (Prefect then says what to set)."""
    from prefect.settings import get_current_settings  # imports prefect (~1 s), which the run needs anyway

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    for name, value in LEAN_SERVER_SETTINGS.items():
        os.environ.setdefault(name, value)  # the server's process reads them; a user's own values win
    # Prefect waits 20 s by default; booting beside torch's imports on a busy 2-core machine took up to 50.
    return TemporaryServer(max(STARTUP_TIMEOUT_S, settings.server.ephemeral.startup_timeout_seconds))
