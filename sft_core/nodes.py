"""Training on several machines: every node must see the same checkpoint folder, and when a node dies
the others say which one.

A worker whose peer dies gets gloo's "Connection closed by peer [ip]:port" (NCCL's errors are alike):
an address, not a node. So each rank bumps a counter in the launcher's rendezvous store (the TCPStore
at MASTER_ADDR:MASTER_PORT that torchrun's agent hosts, which outlives the workers of other nodes)
from a daemon thread. When a collective fails, the survivors watch the counters for a few seconds; a
rank whose counter stood still belongs to a node that died. Counters, not clocks: machines' clocks
need not agree.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from sft_core.config import DistributedConfig
from sft_core.errors import CAUSE_MARK, ConfigError, SFTError

logger = logging.getLogger(__name__)

BEAT_S = 1.0  # how often each rank bumps its counter
STILL_FOR_S = 5.0  # a counter that has not moved for this long belongs to a process that is gone
SHARED_WAIT_S = 10.0  # how long rank 0 waits for the other ranks' marker files (NFS caches directory listings)
_BEAT_KEY = "sftflow/beat/{rank}"
_NODE_KEY = "sftflow/node/{rank}"
SHARED_CHECK_DIR = ".shared-storage-check"  # under train.checkpoint_dir, removed again after the check


def spans_machines(dist: DistributedConfig) -> bool:
    """Whether this run has ranks on other machines: the config says so, or the launcher does (a torchrun
    started by hand with --nnodes > 1 sets GROUP_WORLD_SIZE)."""
    return dist.num_machines > 1 or int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1


def this_machine(dist: DistributedConfig) -> int:
    """This node's number: the config's machine_rank, else the launcher's node rank."""
    return dist.machine_rank if dist.num_machines > 1 else int(os.environ.get("GROUP_RANK", "0"))


def node_name(machine_rank: int) -> str:
    return f"node {machine_rank} (machine_rank {machine_rank})"


class NodeLost(RuntimeError):
    """A node of a multi-machine run died or became unreachable; the message names it."""


def _store(timeout_s: float):
    """A client of the launcher's rendezvous store."""
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


class NodeWatch:
    """This rank's heartbeat in the rendezvous store, and ``lost()`` to name the nodes whose beats stopped."""

    def __init__(self, machine_rank: int):
        self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        self._store = _store(timeout_s=30)
        self._store.set(_NODE_KEY.format(rank=self.rank), str(machine_rank))
        self._store.add(_BEAT_KEY.format(rank=self.rank), 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sftflow-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        key = _BEAT_KEY.format(rank=self.rank)
        while not self._stop.wait(BEAT_S):
            try:
                self._store.add(key, 1)
            except Exception:  # noqa: BLE001 - the store is gone; lost() reports that
                return

    def stop(self) -> None:
        self._stop.set()

    def lost(self) -> str | None:
        """Which nodes stopped answering, as a sentence; None when every rank still beats."""
        try:
            store = _store(timeout_s=5)  # its own connection: the beat thread uses the other
            beats = {r: store.add(_BEAT_KEY.format(rank=r), 0) for r in range(self.world_size) if r != self.rank}
            deadline = time.monotonic() + STILL_FOR_S
            still = set(beats)
            while still and time.monotonic() < deadline:
                time.sleep(0.25)
                still = {r for r in still if store.add(_BEAT_KEY.format(rank=r), 0) == beats[r]}
            machines = {r: store.get(_NODE_KEY.format(rank=r)).decode() if store.check([_NODE_KEY.format(rank=r)])
                        else "?" for r in still}
        except Exception as err:  # noqa: BLE001 - an unreachable store is itself the diagnosis
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return (f"the rendezvous store at {self.address} stopped answering ({first_line}): the node that hosts "
                    f"it exited or died, or is unreachable; with rdzv_backend static that is {node_name(0)}, with "
                    f"c10d the node at the rendezvous endpoint")
        if not still:
            return None
        nodes = sorted(set(machines.values()))
        named = ", ".join(node_name(int(m)) if m.isdigit() else "an unknown node" for m in nodes)
        return (f"{named} exited or died: rank(s) {sorted(still)} stopped answering the rendezvous store at "
                f"{self.address} (killed, crashed, or the machine is unreachable; its own log says why). "
                f"Relaunch every node with train.resume_from_checkpoint=latest to go on from the last checkpoint")


@contextlib.contextmanager
def naming_lost_nodes(dist: DistributedConfig) -> Iterator[None]:
    """On several machines, turn a failure caused by a dead node into NodeLost naming it (and print that
    reason on a line the launching process picks up, sft_core.errors.CAUSE_MARK)."""
    if not spans_machines(dist) or "MASTER_ADDR" not in os.environ or "RANK" not in os.environ:
        yield
        return
    watch = None
    try:
        watch = NodeWatch(this_machine(dist))
    except Exception as err:  # noqa: BLE001 - a diagnosis aid must not stop training
        logger.warning("Cannot reach the rendezvous store at %s:%s (%s): a node that dies will not be named",
                       os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], err)
    if watch is None:
        yield
        return
    try:
        yield
    except SFTError:  # bad input fails every rank alike; no node to blame
        raise
    except Exception as err:
        reason = watch.lost()
        if reason is None:
            raise
        print(CAUSE_MARK + reason, file=sys.stderr, flush=True)
        raise NodeLost(reason) from err
    finally:
        watch.stop()


def check_shared_folder(accelerator: Accelerator, folder: Path, dist: DistributedConfig) -> None:
    """On several machines: every rank writes a marker named by its rank into ``folder``; rank 0 must see them all.

    Each rank writes its own RNG state into every checkpoint and reads it back on resume, so on several
    machines train.checkpoint_dir must be one folder that every node sees (NFS, a ReadWriteMany volume).
    Collective: every rank calls it; every rank raises the same ConfigError when a marker is missing."""
    if not spans_machines(dist):
        return
    machine_rank = this_machine(dist)
    marks = folder / SHARED_CHECK_DIR
    machine_of = gather_object([machine_rank])  # rank -> machine_rank
    if accelerator.is_main_process:
        shutil.rmtree(marks, ignore_errors=True)
        marks.mkdir(parents=True)
    accelerator.wait_for_everyone()
    marks.mkdir(parents=True, exist_ok=True)  # on a node that does not share the folder, this is a local one
    (marks / f"rank-{accelerator.process_index}").write_text(str(machine_rank))
    accelerator.wait_for_everyone()
    missing: list[int] = []
    if accelerator.is_main_process:
        expected = range(accelerator.num_processes)
        deadline = time.monotonic() + SHARED_WAIT_S
        while missing := [r for r in expected if not (marks / f"rank-{r}").exists()]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    missing = broadcast_object_list([missing])[0]
    accelerator.wait_for_everyone()
    shutil.rmtree(marks, ignore_errors=True)
    if missing:
        nodes = ", ".join(node_name(m) for m in sorted({machine_of[r] for r in missing}))
        raise ConfigError("train.checkpoint_dir", f"{folder} is not shared storage: rank 0 does not see the files "
                          f"that rank(s) {missing} on {nodes} wrote there. With distributed.num_machines > 1 every "
                          f"node must see the same checkpoint folder (NFS, a ReadWriteMany volume): every rank "
                          f"writes its own RNG state into each checkpoint and reads it back on resume")
