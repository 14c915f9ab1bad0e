"""Prefect global concurrency limits the pipeline holds: one helper that creates a missing limit, then holds a slot.

``sft-train`` (limit 1 when created here) keeps two trainings off one machine's accelerator; a deployment's run
holds it unless its parameters name another limit. ``sftflow-promotion-NAME`` serialises promotion decisions.
Slots are leases: a holder that is killed (SIGKILL, a lost machine) frees its slot when the lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

TRAIN_LIMIT = "sft-train"  # the one name: params, deployments, README, scripts/load_test.py
LEASE_S = 60.0  # a killed holder blocks the next run at most this long (plus the server's 15 s reaper loop)


def ensure_limit(name: str, limit: int = 1, logger: logging.Logger | logging.LoggerAdapter | None = None) -> bool:
    """Create the global concurrency limit ``name`` when the server has none by that name. True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # another run created it meanwhile
                return False
    if logger is not None:
        logger.info("Created the global concurrency limit %r with limit %d (more at once: "
                    "`prefect gcl update %s --limit N`)", name, limit, name)
    return True


@contextlib.contextmanager
def hold(name: str, logger: logging.Logger | logging.LoggerAdapter | None = None, *,
         survive_lost_lease: bool = False) -> Iterator[None]:
    """Hold one slot of the limit ``name`` (created with limit 1 when missing) for the block's duration.

    ``survive_lost_lease``: a failed lease renewal (the server briefly away) does not stop the block. Right for
    training (losing the slot for a while is cheaper than losing hours of work); wrong for a mutual-exclusion
    lock such as the promotion decision's, which must fail rather than run on unguarded."""
    from prefect.concurrency.sync import concurrency

    ensure_limit(name, logger=logger)
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S,
                     raise_on_lease_renewal_failure=not survive_lost_lease):
        yield
