"""An owner rides out its lease bucket's leader election; one that lost the lease is fenced.

Real 3-node nats-server cluster, R=3 buckets (docs/CLOUD.md "Riding out a leader
election"). Each worker connects to one named node, so which node dies decides
what it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import (
    COMMITS_BUCKET,
    LEASES_BUCKET,
    TRANSIENT,
    FencedError,
    connect,
    open_bucket,
)
from cloud_tecc.jetstream.lease import Lease, LeaseState
from cloud_tecc.jetstream.server import NatsDeployment, NatsNode, start_cluster

pytestmark = pytest.mark.processes

TTL_S = 2
GRACE_S = 12.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsDeployment]:
    with start_cluster(tmp_path / "nats") as dep:
        yield dep


def _url(dep: NatsDeployment, node: NatsNode) -> str:
    """``node``'s client URL with the party credential (as in ``dep.servers``)."""
    return next(u for u in dep.servers if u.endswith(f":{node.spec.port}"))


@contextlib.asynccontextmanager
async def _clients(*servers: list[str]) -> AsyncIterator[tuple[Client, ...]]:
    """One client per server list, closed however the test ends (a failed assertion left
    open clients whose streams were collected, and warned, in a later test)."""
    async with contextlib.AsyncExitStack() as stack:
        ncs = []
        for urls in servers:
            nc = await connect(urls)
            stack.push_async_callback(nc.close)
            ncs.append(nc)
        yield tuple(ncs)


async def _leader(nc: Client, stream: str) -> str:
    """The stream leader's node name (the lease and commit buckets created first)."""
    for name in (LEASES_BUCKET, COMMITS_BUCKET):
        await open_bucket(nc.jetstream(), name, replicas=3)
    for _ in range(60):
        try:
            info = await asyncio.wait_for(nc.jetstream().stream_info(stream), 2)
        except TRANSIENT:
            await asyncio.sleep(0.5)
            continue
        if info.cluster is not None and info.cluster.leader:
            return info.cluster.leader
        await asyncio.sleep(0.5)
    raise AssertionError(f"{stream} has no leader")


async def _commit(commits: CommittedState, fence: int, watermark_ns: int) -> None:
    """A fenced commit, retried while a bucket leader is elected (as ActiveShard does)."""
    for _ in range(120):
        try:
            await commits.commit(fence=fence, worker_id="w", now_ns=time.time_ns(),
                                 watermark_ns=watermark_ns)  # fmt: skip
            return
        except TRANSIENT:
            await asyncio.sleep(0.25)
    raise AssertionError("the commit did not land within 30 s")


async def _claim(commits: CommittedState, fence: int, worker_id: str = "b") -> None:
    """A claim, retried while the bucket's stream answers nobody yet (it was just created, or
    its leader is being elected): a busy machine's first claim met "no responders" once."""
    for _ in range(120):
        try:
            await commits.claim(fence=fence, worker_id=worker_id, now_ns=time.time_ns())
            return
        except TRANSIENT:
            await asyncio.sleep(0.25)
    raise AssertionError("the claim did not land within 30 s")


def test_an_owner_keeps_its_role_through_the_lease_leader_kill(cluster: NatsDeployment) -> None:
    """SIGKILL of the lease bucket's leader (an election longer than the TTL, shorter than
    the grace): the owner stays the owner throughout and its next epoch commits under the
    same token.

    Fails on the code before this change: the renewals failed for longer than the TTL,
    the term ended ("renewal overdue") and the owner stood down.
    """

    async def run() -> None:
        probe = await connect(cluster.servers)
        leader = await _leader(probe, f"KV_{LEASES_BUCKET}")
        await probe.close()
        victim = next(n for n in cluster.nodes if n.spec.name == leader)
        other = next(n for n in cluster.nodes if n is not victim)
        async with _clients([_url(cluster, other)]) as (nc,):
            js = nc.jetstream()
            lease = Lease(js, shard=0, worker_id="owner", ttl_s=TTL_S, replicas=3, grace_s=GRACE_S)
            await lease.open()
            commits = await CommittedState.open(js, shard=0, replicas=3)
            token = await lease.acquire()
            await _claim(commits, token, "owner")
            await asyncio.sleep(TTL_S / 3 + 0.1)  # one renewal done
            victim.kill()
            killed = time.monotonic()
            graced = False
            while lease.in_grace or time.monotonic() - killed < TTL_S + 0.5:
                assert lease.held, lease.lost_reason
                graced = graced or lease.in_grace
                assert time.monotonic() - killed < GRACE_S + TTL_S
                await asyncio.sleep(0.1)
            assert graced  # the election outlasted the TTL: the grace was needed
            assert lease.held
            assert lease.token == token
            await _commit(commits, lease.token, watermark_ns=10)
            record = await commits.load()
            assert record is not None
            assert (record.fence, record.watermark_ns) == (token, 10)
            holder = await lease.holder()
            assert holder is not None
            assert holder.worker_id == "owner"
            await lease.release()

    asyncio.run(run())


def test_an_owner_that_lost_the_lease_during_a_partition_is_fenced(
    cluster: NatsDeployment,
) -> None:
    """The owner's node is frozen past the TTL: it keeps its role (grace), but a standby on
    another node acquires the expired key and claims; the old owner's commit is refused
    and its term ends as soon as its node answers again."""

    async def run() -> None:
        probe = await connect(cluster.servers)
        leader = await _leader(probe, f"KV_{LEASES_BUCKET}")
        await probe.close()
        followers = [n for n in cluster.nodes if n.spec.name != leader]
        frozen, healthy = followers[0], followers[1]
        async with _clients([_url(cluster, frozen)], [_url(cluster, healthy)]) as (a_nc, b_nc):
            a = Lease(a_nc.jetstream(), shard=1, worker_id="a", ttl_s=TTL_S, replicas=3,
                      grace_s=GRACE_S)  # fmt: skip
            b = Lease(b_nc.jetstream(), shard=1, worker_id="b", ttl_s=TTL_S, replicas=3,
                      grace_s=GRACE_S)  # fmt: skip
            await a.open()
            await b.open()
            a_commits = await CommittedState.open(a_nc.jetstream(), shard=1, replicas=3)
            b_commits = await CommittedState.open(b_nc.jetstream(), shard=1, replicas=3)
            token_a = await a.acquire()
            await _claim(a_commits, token_a, "a")
            frozen.signal(signal.SIGSTOP)
            try:
                token_b = await asyncio.wait_for(b.acquire(), 10)
                await _claim(b_commits, token_b)  # retried if the frozen node led tecc_commits
                assert a.held  # a still believes: only the fence protects
                assert a.in_grace
            finally:
                frozen.signal(signal.SIGCONT)
            assert token_b > token_a
            with pytest.raises(FencedError, match=f"newer token {token_b}"):
                await _commit(a_commits, a.token, watermark_ns=20)
            reason = await asyncio.wait_for(a.wait_lost(), 10)
            assert a.state is LeaseState.LOST
            assert "another worker" in reason
            assert b.held
            record = await b_commits.load()
            assert record is not None
            assert (record.worker_id, record.fence, record.watermark_ns) == ("b", token_b, 0)
            await b.release()

    asyncio.run(run())
