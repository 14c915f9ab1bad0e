"""Announce new training data: the ``sftflow.data.updated`` event, sent only when the data's digest changed.

Two callers share this: ``python -m flows.data_updated PATH`` and the scheduled ``watch-data`` flow.
Both keep the last digest they announced in one place, a Prefect Variable per data path, written only
after the server took the event; so a failed send is retried by the next call, and data one of them
announced is "unchanged" for the other (two calls at the same moment may both send; the trigger's window
makes that one run). The deployment trigger on ``sft-retrain`` (deployments/) turns
the event into a retraining run on that path.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.events.related import related_resources_from_run_context
from prefect.settings import get_current_settings
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.variables import Variable
from pydantic import BaseModel

from sft_core.data.digest import DataDigest, data_digest
from sft_core.data.sources import fingerprint_source
from sft_core.errors import DataError
from tasks.retries import unless_bad_input

DATA_UPDATED_EVENT = "sftflow.data.updated"
RESOURCE_PREFIX = "sftflow.data."  # the event's resource id: this + the data's absolute path
PATH_LABEL = "sftflow.data.path"  # the resource label the trigger passes to sft-retrain as data_path
DIGEST_LABEL = "sftflow.data.digest"
VARIABLE_PREFIX = "sftflow-data-"


class DataAnnouncement(BaseModel):
    path: str  # absolute
    digest: str
    previous_digest: str | None  # the last announced one; None the first time
    emitted: bool  # False: unchanged since the last announcement, no event
    event_id: str | None = None
    variable: str  # the Prefect Variable holding the last announced digest

    def describe(self) -> str:
        if not self.emitted:
            return f"unchanged: {self.path} (digest {self.digest}); no event"
        since = f"was {self.previous_digest}" if self.previous_digest else "first announcement"
        return f"changed: {self.path} (digest {self.digest}, {since}); sent {DATA_UPDATED_EVENT} {self.event_id}"


def digest_variable_name(path: str) -> str:
    """The Variable for one data path. Variable names allow only lowercase letters, digits, - and _, so the
    name holds a hash of the absolute path; the Variable's value names the path itself."""
    return VARIABLE_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:32]


def data_resource(path: str, digest: str) -> dict[str, str]:
    """The event's resource: one id per data path (the trigger's window is per id), the path as a label."""
    return {"prefect.resource.id": RESOURCE_PREFIX + path, "prefect.resource.name": path,
            PATH_LABEL: path, DIGEST_LABEL: digest}


def require_api() -> None:
    """An event sent to a temporary server that lives for this one command would trigger nothing."""
    if not get_current_settings().api.url:
        raise RuntimeError("PREFECT_API_URL is not set: the sftflow.data.updated event must reach the Prefect "
                           "server that runs sft-retrain (e.g. `prefect config set "
                           "PREFECT_API_URL=http://127.0.0.1:4200/api`)")


def announce_if_changed(path: str, *, force: bool = False) -> DataAnnouncement:
    """Digest ``path``; when it differs from the last announced digest (or ``force``), send the event,
    then record the digest. Raises sft_core's DataError naming the path for a missing or remote path."""
    return run_coro_as_sync(_announce(path, force=force))


async def _announce(path: str, *, force: bool) -> DataAnnouncement:
    require_api()
    current = data_digest(path)
    name, last = await _last_announcement(current.path)
    previous = last.get("digest") if last else None
    result = DataAnnouncement(path=current.path, digest=current.digest, previous_digest=previous, emitted=False,
                              variable=name)
    if previous == current.digest and not force:
        return result
    return await _send(current, result)


async def _last_announcement(path: str) -> tuple[str, dict | None]:
    """The path's Variable and what it holds (path, digest, event id, when), None before the first announcement."""
    name = digest_variable_name(path)
    last = await Variable.aget(name, default=None)
    return name, last if isinstance(last, dict) else None


async def _send(current: DataDigest, result: DataAnnouncement) -> DataAnnouncement:
    """The event, then the Variable that records it as announced."""
    async with get_client() as client:
        related = await related_resources_from_run_context(client)  # the watch-data run, when there is one
    event = Event(event=DATA_UPDATED_EVENT, resource=data_resource(current.path, current.digest), related=related,
                  payload={"digest": current.digest, "previous_digest": result.previous_digest})
    # checkpoint_every=1: emit() returns once the server has acknowledged the event (a websocket ping
    # after it), so the Variable below never records a digest whose event was lost on the way.
    async with get_events_client(checkpoint_every=1) as events:
        await events.emit(event)
    await Variable.aset(result.variable, {"path": current.path, "digest": current.digest, "event_id": str(event.id),
                                          "announced_at": datetime.now(timezone.utc).isoformat()},
                        tags=["sftflow", "data-digest"], overwrite=True)
    return result.model_copy(update={"emitted": True, "event_id": str(event.id)})


@task(name="announce_data", retries=2, retry_delay_seconds=10, retry_condition_fn=unless_bad_input)
def announce_data(path: str) -> DataAnnouncement:
    """One watched path: the event if its content changed since the last announcement (retried on a
    network error; bad input, an SFTError naming the path, is not retried)."""
    announced = announce_if_changed(path)
    get_run_logger().info(announced.describe())
    return announced


def announce_missed_change(data_path: str | None, trained_digest: str | None, *,
                           flow_run_id: str | None = None) -> DataAnnouncement | None:
    """After a run on ``data_path``: a change that was announced after the run read its data (digest
    ``trained_digest``, in ``fingerprint_source``'s terms) and that no run has taken since is announced
    again. It closes the trigger window's gap: an announcement within the window of the event that started
    this run starts no run of its own. None when there is nothing to hand back: the data did not change,
    the change was never announced (``data_updated`` or watch-data will), another sft-pipeline run on that
    path was created after the announcement, or the data is not local (the demo, a hub name, a URI)."""
    if not data_path or not trained_digest or fingerprint_source(data_path) == trained_digest:
        return None
    try:
        current = data_digest(data_path)
    except DataError:
        return None
    return run_coro_as_sync(_announce_if_untaken(data_path, current, flow_run_id))


async def _announce_if_untaken(as_given: str, current: DataDigest, flow_run_id: str | None) -> DataAnnouncement | None:
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterExpectedStartTime)

    name, last = await _last_announcement(current.path)
    if not last or last.get("digest") != current.digest or not last.get("announced_at"):
        return None
    async with get_client() as client:
        later = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["sft-pipeline"])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(
                after_=datetime.fromisoformat(last["announced_at"]))))
    taken = [r for r in later if str(r.id) != str(flow_run_id)
             and ((r.parameters or {}).get("config") or {}).get("data_path") in (as_given, current.path)]
    if taken:
        return None
    require_api()
    return await _send(current, DataAnnouncement(path=current.path, digest=current.digest,
                                                 previous_digest=current.digest, emitted=False, variable=name))


def hand_back_missed_change(data_path: str | None, trained_digest: str | None) -> None:
    """The flow's last step: ``announce_missed_change`` for this flow run, logged; it never fails a run whose
    model is already trained and saved."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    try:
        announced = announce_missed_change(data_path, trained_digest, flow_run_id=flow_run.get_id())
    except Exception as error:  # noqa: BLE001
        logger.warning("Could not check whether %s changed during this run: %r", data_path, error)
        return
    if announced is not None:
        logger.warning("%s changed while this run trained, and that announced change started no run of its own "
                       "(it came within the retraining trigger's window): announced it again", announced.path)
