"""Committed state fenced by lease tokens and the standby supervisor (the shard map store:
test_shardmap_kv.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from prometheus_client import CollectorRegistry

from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import (
    COMMITS_BUCKET,
    FencedError,
    KVError,
    open_bucket,
    shard_key,
)
from cloud_tecc.jetstream.lease import Lease
from cloud_tecc.jetstream.server import NatsDeployment, start_node
from cloud_tecc.jetstream.standby import LeaseMetrics, run_while_leased

pytestmark = pytest.mark.processes

Hook = Callable[[], Awaitable[None]]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsDeployment]:
    with start_node(tmp_path_factory.mktemp("nats")) as dep:
        yield dep


@pytest.fixture
async def nc(deployment: NatsDeployment) -> AsyncIterator[Client]:
    client = await nats.connect(servers=deployment.servers, connect_timeout=2)
    yield client
    await client.close()


async def test_old_owner_is_refused_once_the_new_owner_claimed(nc: Client) -> None:
    state = await CommittedState.open(nc.jetstream(), shard=1)
    assert await state.load() is None
    await state.commit(fence=10, worker_id="old", now_ns=1, watermark_ns=60, log_seq=5)
    claimed = await state.claim(fence=12, worker_id="new", now_ns=2)
    assert (claimed.watermark_ns, claimed.log_seq, claimed.fence) == (60, 5, 12)
    with pytest.raises(FencedError, match="token 10 refused, new wrote with the newer token 12"):
        await state.commit(fence=10, worker_id="old", now_ns=3, watermark_ns=120)
    await state.commit(fence=12, worker_id="new", now_ns=4, watermark_ns=120, released_ns=120)
    stored = await state.load()
    assert stored is not None
    assert (stored.worker_id, stored.watermark_ns, stored.released_ns) == ("new", 120, 120)


async def test_racing_stale_commits_never_land_after_the_claim(nc: Client) -> None:
    """Stale writes racing a claim either land before it or are refused, never after."""
    js = nc.jetstream()
    for round_ in range(15):
        shard = 100 + round_
        old = await CommittedState.open(js, shard=shard)
        new = CommittedState(old.bucket, shard=shard)
        await old.commit(fence=1, worker_id="old", now_ns=0, watermark_ns=0)

        async def stale(i: int, state: CommittedState = old) -> bool:
            try:
                await state.commit(fence=1, worker_id="old", now_ns=i, watermark_ns=i)
            except FencedError:
                return False
            return True

        before = [asyncio.create_task(stale(i)) for i in range(1, 4)]
        claim = asyncio.create_task(new.claim(fence=2, worker_id="new", now_ns=99))
        after = [asyncio.create_task(stale(i)) for i in range(4, 7)]
        await asyncio.gather(*before, *after)
        claimed = await claim
        final = await new.load()
        assert final is not None
        assert final.fence == 2
        assert final.worker_id == "new"
        # Whatever landed before the claim is kept; nothing landed after it.
        assert final.watermark_ns == claimed.watermark_ns


async def test_shard_mismatch_and_garbage_are_refused_with_the_key(nc: Client) -> None:
    js = nc.jetstream()
    bucket = await open_bucket(js, COMMITS_BUCKET)
    await bucket.write(shard_key(7), b"not json", expected=0)
    with pytest.raises(KVError, match=r"tecc_commits/shard\.7 holds no valid CommitRecord"):
        await CommittedState(bucket, shard=7).load()
    with pytest.raises(FencedError, match="fence 0 is no lease token"):
        await CommittedState(bucket, shard=8).commit(
            fence=0, worker_id="w", now_ns=0, watermark_ns=0
        )


async def test_supervisor_hands_over_on_clean_stop_and_records_the_takeover(
    deployment: NatsDeployment,
) -> None:
    """Two supervisors, one shard: cancelling the active one makes the other active."""
    events: list[tuple[str, str]] = []
    registry = CollectorRegistry()
    metrics = LeaseMetrics(registry)
    clients = [await nats.connect(servers=deployment.servers) for _ in range(2)]
    try:
        async with (
            Lease(clients[0].jetstream(), shard=9, worker_id="a", ttl_s=30) as la,
            Lease(clients[1].jetstream(), shard=9, worker_id="b", ttl_s=30) as lb,
        ):

            def hooks(name: str) -> tuple[Hook, Hook]:
                async def start() -> None:
                    events.append((name, "start"))

                async def stop() -> None:
                    events.append((name, "stop"))

                return start, stop

            sa, ta = hooks("a")
            sb, tb = hooks("b")
            first = asyncio.create_task(run_while_leased(la, sa, ta))
            await asyncio.sleep(0.5)
            second = asyncio.create_task(run_while_leased(lb, sb, tb, metrics=metrics))
            await asyncio.sleep(0.5)
            assert events == [("a", "start")]
            assert registry.get_sample_value("tecc_shard_owner", {"shard": "9"}) == 0.0
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            for _ in range(50):
                if ("b", "start") in events:
                    break
                await asyncio.sleep(0.1)
            assert events == [("a", "start"), ("a", "stop"), ("b", "start")]
            assert registry.get_sample_value("tecc_shard_owner", {"shard": "9"}) == 1.0
            assert registry.get_sample_value("tecc_shard_takeover_seconds_count") == 1.0
            age = registry.get_sample_value("tecc_shard_lease_age_seconds", {"shard": "9"})
            assert age is not None
            assert age > 0
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            assert events[-1] == ("b", "stop")
    finally:
        for client in clients:
            await client.close()


async def test_a_bucket_with_other_settings_is_refused_with_the_fix(nc: Client) -> None:
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket="tecc_other", history=5))
    with pytest.raises(KVError, match=r"history 5 .* \(nats kv rm tecc_other\)"):
        await open_bucket(js, "tecc_other")
