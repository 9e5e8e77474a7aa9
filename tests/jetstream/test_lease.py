"""Shard leases on a real nats-server: one owner under races, renewal, loss, release, expiry."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from cloud_tecc.jetstream.kv import LEASES_BUCKET, KVError, open_bucket, shard_key
from cloud_tecc.jetstream.lease import Lease, LeaseRecord, LeaseState
from cloud_tecc.jetstream.leaserecord import FAST_POLL_S, standby_poll_s
from cloud_tecc.jetstream.server import NatsDeployment, start_node

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsDeployment]:
    with start_node(tmp_path_factory.mktemp("nats")) as dep:
        yield dep


@pytest.fixture
async def connect(deployment: NatsDeployment) -> AsyncIterator[list[Client]]:
    """Fresh connections (one per simulated worker), closed at the end."""
    opened: list[Client] = []
    yield opened
    for nc in opened:
        await nc.close()


async def _nc(deployment: NatsDeployment, opened: list[Client]) -> Client:
    nc = await nats.connect(servers=deployment.servers, connect_timeout=2)
    opened.append(nc)
    return nc


async def test_two_contenders_never_both_own(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    """Each round three workers race for a free key (absent, then released): one wins."""
    ncs = [await _nc(deployment, connect) for _ in range(3)]
    leases = [
        Lease(nc.jetstream(), shard=1, worker_id=f"w{i}", ttl_s=5) for i, nc in enumerate(ncs)
    ]
    for lease in leases:
        await lease.open()
    tokens = []
    for _ in range(30):
        won = await asyncio.gather(*(lease.try_acquire() for lease in leases))
        assert sum(won) == 1, won
        winner = leases[won.index(True)]
        stored = await winner.holder()
        assert stored is not None
        assert stored.worker_id == winner.worker_id
        tokens.append(winner.token)
        await winner.release()
        assert winner.state is LeaseState.RELEASED
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


async def test_renewing_holder_keeps_the_lease_past_its_ttl(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    a, b = [await _nc(deployment, connect) for _ in range(2)]
    async with (
        Lease(a.jetstream(), shard=2, worker_id="a", ttl_s=1) as holder,
        Lease(b.jetstream(), shard=2, worker_id="b", ttl_s=1) as standby,
    ):
        assert await holder.try_acquire()
        first = holder.revision
        for _ in range(14):  # 3.5 s = 3.5 TTLs
            assert not await standby.try_acquire()
            assert holder.held
            await asyncio.sleep(0.25)
        assert holder.revision > first  # renewed, and the token stayed
        assert holder.token == first


async def test_release_hands_over_without_waiting_for_the_ttl(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    a, b = [await _nc(deployment, connect) for _ in range(2)]
    async with (
        Lease(a.jetstream(), shard=3, worker_id="a", ttl_s=30) as old,
        Lease(b.jetstream(), shard=3, worker_id="b", ttl_s=30) as new,
    ):
        await old.acquire()
        waiting = asyncio.create_task(new.acquire())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await old.release()
        token = await asyncio.wait_for(waiting, 5)  # far below the 30 s TTL
        assert token > old.token
        assert new.previous_end_ns is not None  # the release record's stamp


async def test_changed_revision_loses_the_lease_at_the_next_renewal(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    """A write by someone else (the owner was presumed dead) ends the holder's term."""
    a, b = [await _nc(deployment, connect) for _ in range(2)]
    reasons: list[str] = []
    async with Lease(a.jetstream(), shard=4, worker_id="a", ttl_s=3) as lease:
        lease.on_lost(reasons.append)
        await lease.acquire()
        other = await open_bucket(b.jetstream(), LEASES_BUCKET)
        intruder = LeaseRecord(worker_id="b", acquired_ns=1, renewed_ns=1, ttl_s=3)
        await other.write(
            shard_key(4), msgspec.json.encode(intruder), expected=lease.revision, ttl_s=3
        )
        reason = await asyncio.wait_for(lease.wait_lost(), 5)
        assert "revision changed" in reason
        assert reasons == [reason]
        assert not lease.held
        assert lease.state is LeaseState.LOST


async def test_frozen_holder_is_not_held_when_it_wakes(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    """Past its deadline the holder is not held before any renewal task runs."""
    now = [1000.0]
    nc = await _nc(deployment, connect)
    async with Lease(
        nc.jetstream(), shard=5, worker_id="a", ttl_s=2, clock=lambda: now[0]
    ) as lease:
        await lease.acquire()
        assert lease.held
        now[0] += 1.85  # the deadline is ttl - guard after the acquiring write was sent
        assert not lease.held
        assert "overdue" in lease.lost_reason


async def test_dead_holder_expires_and_the_standby_gets_a_higher_token(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    a, b = [await _nc(deployment, connect) for _ in range(2)]
    dead = Lease(a.jetstream(), shard=6, worker_id="a", ttl_s=1)
    await dead.open()
    await dead.acquire()
    await a.close()  # no more renewals: the key expires on the server after 1 s
    async with Lease(b.jetstream(), shard=6, worker_id="b", ttl_s=1) as standby:
        assert not await standby.try_acquire()  # still within the TTL
        token = await asyncio.wait_for(standby.acquire(), 5)
        assert token > dead.token
        assert standby.previous_end_ns is not None
    assert await asyncio.wait_for(dead.wait_lost(), 5)
    assert not dead.held


async def test_foreign_value_is_waited_out_not_trusted(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    nc = await _nc(deployment, connect)
    bucket = await open_bucket(nc.jetstream(), LEASES_BUCKET)
    await bucket.write(shard_key(7), b'{"owner": "someone"}', expected=0, ttl_s=1)
    async with Lease(nc.jetstream(), shard=7, worker_id="a", ttl_s=1) as lease:
        assert not await lease.try_acquire()
        with pytest.raises(KVError, match=r"tecc_leases/shard\.7 holds no valid LeaseRecord"):
            await lease.holder()
        await asyncio.wait_for(lease.acquire(), 5)  # once the server expired it


async def test_bad_settings_name_the_field(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    js = (await _nc(deployment, connect)).jetstream()
    with pytest.raises(ValueError, match="ttl_s"):
        Lease(js, shard=0, worker_id="a", ttl_s=0)
    with pytest.raises(ValueError, match="worker_id"):
        Lease(js, shard=0, worker_id="a b", ttl_s=1)


async def test_unreachable_bucket_past_the_ttl_loses_the_lease(tmp_path: Path) -> None:
    with start_node(tmp_path / "nats") as dep:
        nc = await nats.connect(servers=dep.servers, connect_timeout=2)
        try:
            async with Lease(nc.jetstream(), shard=0, worker_id="a", ttl_s=1) as lease:
                await lease.acquire()
                dep.nodes[0].signal(signal.SIGSTOP)  # connection open, nothing answers
                try:
                    reason = await asyncio.wait_for(lease.wait_lost(), 5)
                finally:
                    dep.nodes[0].signal(signal.SIGCONT)
                assert "overdue" in reason
                assert not lease.held
        finally:
            await nc.close()


async def test_renewal_whose_reply_was_lost_keeps_the_term(
    deployment: NatsDeployment, connect: list[Client]
) -> None:
    """The stored record is still our term at a newer revision: adopt it, stay held.

    This is what a renewal looks like whose write landed but whose reply was lost.
    """
    a, b = [await _nc(deployment, connect) for _ in range(2)]
    async with Lease(a.jetstream(), shard=8, worker_id="a", ttl_s=3) as lease:
        await lease.acquire()
        holder = await lease.holder()
        assert holder is not None
        other = await open_bucket(b.jetstream(), LEASES_BUCKET)
        landed = await other.write(
            shard_key(8),
            msgspec.json.encode(msgspec.structs.replace(holder, renewed_ns=holder.renewed_ns + 1)),
            expected=lease.revision,
            ttl_s=3,
        )
        for _ in range(12):  # 3 s: at least two renewals after the foreign one
            await asyncio.sleep(0.25)
            assert lease.held
        assert lease.revision > landed
        assert lease.token < landed


def test_standby_looks_sooner_once_the_holder_is_due() -> None:
    """While the holder it saw renews, a standby polls every ``poll_s``; from ``poll_s``
    before that holder's last renewal + TTL it polls every 50 ms (until a second after).

    Fails on the code before this change (the standby polled every 0.2 s throughout, so
    it found the expired key 0.1 s late on average, up to 0.2 s).
    """
    s = 10**9
    holder = LeaseRecord(worker_id="w-a", acquired_ns=0, renewed_ns=100 * s, ttl_s=2)
    assert standby_poll_s(None, 0.2, 101 * s) == 0.2
    assert standby_poll_s(holder, 0.2, 100 * s + s // 2) == 0.2  # renewed 0.5 s ago: alive
    assert standby_poll_s(holder, 0.2, 101 * s + 85 * s // 100) == FAST_POLL_S == 0.05
    assert standby_poll_s(holder, 0.2, 102 * s + s // 2) == FAST_POLL_S  # just expired
    assert standby_poll_s(holder, 0.2, 103 * s + s // 10) == 0.2  # long gone: skewed clocks
