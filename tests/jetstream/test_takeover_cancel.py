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
from types import SimpleNamespace
from typing import cast

from cloud_tecc.config import PartyConfig
from cloud_tecc.jetstream.lease import Lease
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.takeover import ActiveShard
from cloud_tecc.tasks import cancel_and_wait
from tests.support.cancels import swallow_cancel


class _Swallowing:
    """A call that swallows a cancel, as a nats-py request on 3.11 whose reply met it:
    ``holder()`` of a lease, ``prewarm()`` of a coordinator (its quote fetches)."""

    def __init__(self) -> None:
        self.calls = 0
        self.inside = asyncio.Event()

    async def call(self) -> None:
        self.calls += 1
        self.inside.set()
        await swallow_cancel()

    holder = prewarm = call


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
    shard, lease = _shard(), _Swallowing()
    shard.lease = cast("Lease", lease)
    await _cancel_while_inside(asyncio.create_task(shard._watch_owner()), lease.inside)
    assert lease.calls >= 1


async def test_the_standby_attestation_ends_on_a_cancel_lost_in_a_prewarm() -> None:
    """Fails without the check: the standby verifies quotes every few seconds for ever."""
    shard, coordinator = _shard(), _Swallowing()
    shard.coordinator = cast("Coordinator", coordinator)
    trust = SimpleNamespace(refresh_s=0.02)
    shard.cfg = cast("PartyConfig", SimpleNamespace(service=SimpleNamespace(trust=trust)))
    await _cancel_while_inside(asyncio.create_task(shard._keep_warm()), coordinator.inside)
    assert coordinator.calls >= 1
