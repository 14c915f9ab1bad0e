"""The `watch-data` flow: announce each watched data path whose content changed since its last announcement.

Deployed by deployments/serve.py (every 10 minutes) and deployments/prefect.yaml; it does what
`python -m flows.data_updated PATH` does, on a schedule, and shares its record of the last digest (a
Prefect Variable per path), so the two never announce the same data twice.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from sft_core.errors import DataError
from tasks.data_events import DataAnnouncement, announce_data

WatchedPaths = Annotated[list[str], Field(description="Local data files or folders to watch (absolute paths: the "
                                                      "flow may run in another working folder).")]


@flow(name="watch-data")
def watch_data(paths: WatchedPaths) -> list[DataAnnouncement]:
    """Send sftflow.data.updated for each path whose content digest changed; fail at the end naming the paths
    that were bad or could not be announced."""
    announced, bad, unreachable = [], [], []
    for path in paths:  # one bad path, or one failed send, does not keep the others from being announced
        try:
            announced.append(announce_data(path))
        except DataError as error:
            bad.append(str(error))
        except Exception as error:  # noqa: BLE001 - the server or network, after the task's retries
            unreachable.append(f"{path}: could not announce: {error!r}")
    if unreachable:
        raise RuntimeError("watch-data: " + "; ".join(unreachable + bad))
    if bad:
        raise DataError("watch-data: " + "; ".join(bad))
    return announced
