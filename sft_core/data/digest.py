"""The content digest of a local data file or folder: what "the data changed" means for retraining.

Whoever announces new data (``python -m flows.data_updated``, the ``watch-data`` flow) compares this
digest with the last one it announced. It is the same hash the data cache and the model's lineage
tags use (``fingerprint_source``), taken over the absolute path, so it changes with the bytes (or,
in a folder, the file names) and not with timestamps.

Only local paths have one: a remote URI or a hub dataset name would need the remote store's own
version (an ETag, a revision), which this engine does not read; sync such data to a local path, or
send the event yourself when you publish it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sft_core.config import EMBEDDED_DATA
from sft_core.data.sources import fingerprint_source
from sft_core.errors import DataError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class DataDigest:
    path: str  # absolute, so the same data named from two working folders is one data set
    digest: str


def data_digest(path: str | Path) -> DataDigest:
    """The digest of a local file or folder; a DataError naming ``path`` for anything else."""
    text = str(path)
    if not text.strip():
        raise DataError("empty data path: give a local file or folder")
    if _URI.match(text):
        raise DataError("remote URIs have no content digest here: sync the data to a local file or folder "
                        "and name that, or emit the sftflow.data.updated event yourself when you publish it",
                        source=text)
    if text.startswith("embedded:"):
        reason = "the built-in demo data never changes" if text == EMBEDDED_DATA else "not a local path"
        raise DataError(f"{reason}: give a local file or folder", source=text)
    local = Path(text).expanduser()
    if not local.exists():
        raise DataError("no such file or folder (a hub dataset name has no content digest here: "
                        "give a local file or folder)", source=text)
    if not (local.is_file() or local.is_dir()):
        raise DataError("not a regular file or folder", source=text)
    resolved = str(local.resolve())
    return DataDigest(path=resolved, digest=fingerprint_source(resolved))
