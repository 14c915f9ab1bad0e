"""The training concurrency limit (tasks/concurrency.py) on the test harness's real Prefect server: a missing limit
is created with limit 1 and a slot is held exactly while the block runs. A deployment's run holding `sft-train`
without naming it is checked end to end by tests/test_worker.py."""

from __future__ import annotations

import uuid

import pytest


def read_limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_a_missing_limit_is_created_with_limit_1_and_held_while_training(prefect_server):
    from prefect.exceptions import ObjectNotFound

    from tasks.concurrency import TRAIN_LIMIT, hold
    from tasks.train import train_limit

    name = f"{TRAIN_LIMIT}-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ObjectNotFound):
        read_limit(name)
    with hold(name):
        inside = read_limit(name)
    after = read_limit(name)
    assert (inside.limit, inside.active_slots) == (1, 1)
    assert after.active_slots == 0
    with hold(name):  # it exists now: held again, not created again
        assert read_limit(name).id == inside.id

    assert train_limit("gpu-a") == "gpu-a"  # a named limit is the one held
    assert train_limit(None) is None  # outside a deployment's run: none, unless named
