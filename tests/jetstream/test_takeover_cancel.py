"""A shard worker's standby loops end on one cancel, even one nats-py swallowed.

On Python 3.11 nats-py's ``wait_for`` drops a cancel that meets a result
(``cloud_tecc.tasks``). ``ActiveShard.run`` used to stop its lease-owner watch
and its standby attestation with a bare ``cancel()``: a watch whose cancel was
lost in ``lease.holder()`` went on polling the closed connection every second
for the life of the process. The loops now check at the top of each turn and
``run`` stops them with ``cancel_and_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import cast

from cloud_tecc.config import PartyConfig
from cloud_tecc.jetstream.lease import Lease
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.takeover import ActiveShard
from cloud_tecc.tasks import cancel_and_wait


class _SwallowingLease:
    """``holder()`` as a nats-py KV read on 3.11: a cancel that meets the reply is lost."""

    def __init__(self) -> None:
        self.reads = 0

    async def holder(self) -> None:
        self.reads += 1
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.01)


class _SwallowingCoordinator:
    """``prewarm()`` whose quote fetch swallows a cancel the same way."""

    def __init__(self) -> None:
        self.calls = 0

    async def prewarm(self) -> None:
        self.calls += 1
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.01)


def _shard() -> ActiveShard:
    shard = object.__new__(ActiveShard)  # the loops read only these attributes
    shard.lease = None
    shard.coordinator = None
    shard.owner, shard._owner_since_ns = "", 0
    shard.role, shard._starting = "standby", False
    return shard


async def _cancel_while_inside(task: asyncio.Task[None], inside: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(inside.wait(), 5)
        task.cancel()  # lands in the swallowing call
        done, _ = await asyncio.wait({task}, timeout=3)
        assert task in done, "the loop went on after its cancel"
        assert task.cancelled(), task.exception()
    finally:
        await cancel_and_wait([task])  # a loop that went on: cancelled until it ends


async def test_the_owner_watch_ends_on_a_cancel_lost_in_the_lease_read() -> None:
    """Fails without the check: the watch reads the lease once a second for ever."""
    shard, lease, inside = _shard(), _SwallowingLease(), asyncio.Event()
    shard.lease = cast("Lease", lease)

    async def holder() -> None:
        inside.set()
        await _SwallowingLease.holder(lease)

    lease.holder = holder  # type: ignore[method-assign]
    await _cancel_while_inside(asyncio.create_task(shard._watch_owner()), inside)
    assert lease.reads >= 1


async def test_the_standby_attestation_ends_on_a_cancel_lost_in_a_prewarm() -> None:
    """Fails without the check: the standby verifies quotes every few seconds for ever."""
    shard, coordinator, inside = _shard(), _SwallowingCoordinator(), asyncio.Event()
    shard.coordinator = cast("Coordinator", coordinator)
    trust = SimpleNamespace(refresh_s=0.02)
    shard.cfg = cast("PartyConfig", SimpleNamespace(service=SimpleNamespace(trust=trust)))

    async def prewarm() -> None:
        inside.set()
        await _SwallowingCoordinator.prewarm(coordinator)

    coordinator.prewarm = prewarm  # type: ignore[method-assign]
    await _cancel_while_inside(asyncio.create_task(shard._keep_warm()), inside)
    assert coordinator.calls >= 1
