"""The lease's state machine around the grace, over an in-memory bucket (pure logic).

One test per row of docs/CLOUD.md "Riding out a leader election": the bucket's
behaviour is scripted (answering, timing out, the key expired, another worker's
record, a release marker) and the holder's state, token and reason checked.
The real-server counterpart is tests/jetstream/test_lease_election.py.
"""

from __future__ import annotations

import asyncio
from typing import cast

import msgspec
import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from cloud_tecc.jetstream.kv import Bucket, RevisionChangedError, Stored
from cloud_tecc.jetstream.lease import Lease, LeaseRecord, LeaseState
from cloud_tecc.jetstream.standby import LeaseMetrics

TTL_S = 1  # deadline 0.9 s after the last renewal was sent
GRACE_S = 1.5


class ScriptedBucket(Bucket):
    """One-key KV with JetStream's compare-and-set rule; ``down`` makes every call time out."""

    def __init__(self) -> None:
        super().__init__(cast(JetStreamContext, None), "tecc_leases")
        self.seq = 0
        self.keys: dict[str, Stored] = {}
        self.down = False

    async def get(self, key: str) -> Stored | None:
        await asyncio.sleep(0)
        if self.down:
            raise TimeoutError("no stream leader")
        return self.keys.get(key)

    async def write(
        self,
        key: str,
        value: bytes,
        *,
        expected: int,
        ttl_s: int | None = None,
        delete: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        await asyncio.sleep(0)
        if self.down:
            raise TimeoutError("no stream leader")
        current = self.keys.get(key)
        if (0 if current is None else current.revision) != expected:
            raise RevisionChangedError(f"{key} is no longer at revision {expected}")
        self.seq += 1
        self.keys[key] = Stored(self.seq, None, value) if delete else Stored(self.seq, value)
        return self.seq

    def expire(self, key: str) -> None:
        """What the stream leader does when the key's TTL has passed: the key is absent."""
        self.keys.pop(key, None)

    def other_owner(self, key: str, *, release: bool = False) -> None:
        """Another worker's record (or, ``release``, its release marker) lands on the key."""
        record = LeaseRecord(worker_id="other", acquired_ns=1, renewed_ns=1, ttl_s=TTL_S,
                             released_ns=2 if release else 0)  # fmt: skip
        self.seq += 1
        raw = msgspec.json.encode(record)
        self.keys[key] = Stored(self.seq, None, raw) if release else Stored(self.seq, raw)


async def _holder(grace_s: float = GRACE_S) -> tuple[Lease, ScriptedBucket]:
    lease = Lease(cast(JetStreamContext, None), shard=0, worker_id="owner", ttl_s=TTL_S,
                  grace_s=grace_s, poll_s=0.05)  # fmt: skip
    bucket = ScriptedBucket()
    lease._bucket = bucket
    assert await lease.try_acquire()
    return lease, bucket


async def _outage(lease: Lease, bucket: ScriptedBucket, seconds: float) -> None:
    bucket.down = True
    await asyncio.sleep(seconds)
    bucket.down = False


async def test_past_the_ttl_within_the_grace_the_owner_keeps_its_role() -> None:
    """Row 1: renewals time out past the deadline; held (in the grace), then renewed in place.

    Fails on the code before this change: the term ended at the deadline ("renewal overdue").
    """
    lease, bucket = await _holder()
    token = lease.token
    await _outage(lease, bucket, 1.6)  # past the 0.9 s deadline, inside 0.9 + 1.5 s
    assert lease.held
    assert lease.in_grace
    await asyncio.sleep(0.2)
    assert lease.held
    assert not lease.in_grace
    assert lease.token == token
    assert lease.rejoins == 0
    stored = bucket.keys[lease.key]
    assert stored.revision == lease.revision > token
    await lease.release()


async def test_a_key_that_expired_in_the_grace_is_rejoined_with_the_same_token() -> None:
    """Row 2: the new leader expired the key; the renewal is refused, the rejoin lands."""
    lease, bucket = await _holder()
    registry = CollectorRegistry()
    LeaseMetrics(registry).track(lease)
    token, acquired = lease.token, (await lease.holder())
    bucket.down = True
    await asyncio.sleep(1.6)
    assert registry.get_sample_value("tecc_shard_lease_in_grace", {"shard": "0"}) == 1.0
    bucket.expire(lease.key)
    bucket.down = False
    await asyncio.sleep(0.2)
    assert lease.held
    assert lease.state is LeaseState.HELD
    assert (lease.token, lease.rejoins) == (token, 1)
    assert registry.get_sample_value("tecc_shard_lease_in_grace", {"shard": "0"}) == 0.0
    assert registry.get_sample_value("tecc_shard_lease_rejoins", {"shard": "0"}) == 1.0
    rec = await lease.holder()
    assert rec is not None
    assert acquired is not None
    assert (rec.worker_id, rec.acquired_ns) == ("owner", acquired.acquired_ns)
    await lease.release()


async def test_another_workers_record_after_the_outage_ends_the_term() -> None:
    """Row 3: a standby acquired the key when it expired: the renewal is refused, lost."""
    lease, bucket = await _holder()
    bucket.down = True
    await asyncio.sleep(1.2)
    bucket.other_owner(lease.key)
    bucket.down = False
    reason = await asyncio.wait_for(lease.wait_lost(), 1.0)
    assert lease.state is LeaseState.LOST
    assert "another worker" in reason
    rec = await lease.holder()
    assert rec is not None
    assert rec.worker_id == "other"


async def test_a_release_marker_of_another_term_is_not_rejoined() -> None:
    """Row 4: another worker held and released a term in the gap: lost, key left alone."""
    lease, bucket = await _holder()
    bucket.down = True
    await asyncio.sleep(1.2)
    bucket.other_owner(lease.key, release=True)
    marker = bucket.keys[lease.key].revision
    bucket.down = False
    await asyncio.wait_for(lease.wait_lost(), 1.0)
    assert lease.state is LeaseState.LOST
    assert bucket.keys[lease.key].revision == marker


async def test_an_outage_longer_than_ttl_and_grace_ends_the_term() -> None:
    """Row 5: still unreachable at deadline + grace: lost with the reason."""
    lease, bucket = await _holder()
    bucket.down = True
    reason = await asyncio.wait_for(lease.wait_lost(), 4.0)
    assert "beyond the TTL and grace" in reason
    bucket.down = False


async def test_a_frozen_renewer_gets_no_grace() -> None:
    """Row 6: no renewal was tried (a SIGSTOPped owner): lost at the deadline, as before."""
    lease, _bucket = await _holder()
    renewer = lease._renewer
    assert renewer is not None
    renewer.cancel()
    await asyncio.sleep(1.0)
    assert not lease.held
    assert "renewal overdue" in lease.lost_reason


async def test_a_refused_renewal_while_reachable_gets_no_rejoin() -> None:
    """Row 7: the key vanished while the bucket answered: lost at once, never rewritten."""
    lease, bucket = await _holder()
    bucket.expire(lease.key)
    await asyncio.wait_for(lease.wait_lost(), 1.0)
    assert lease.state is LeaseState.LOST
    assert lease.key not in bucket.keys


async def test_grace_zero_stands_down_at_the_deadline() -> None:
    """Row 8: ``grace_s`` 0 is the behaviour before the grace."""
    lease, bucket = await _holder(grace_s=0)
    bucket.down = True
    reason = await asyncio.wait_for(lease.wait_lost(), 2.0)
    assert "renewal overdue" in reason
    bucket.down = False


def test_grace_is_checked() -> None:
    with pytest.raises(ValueError, match="grace_s"):
        Lease(cast(JetStreamContext, None), shard=0, worker_id="w", grace_s=-1)


async def test_a_failure_first_seen_after_the_deadline_opens_no_grace() -> None:
    """Row 9: a renewal that was in flight while the process was frozen fails after the
    deadline: that is an overdue renewal, not an outage — lost, no grace."""
    lease, bucket = await _holder()
    renewer = lease._renewer
    assert renewer is not None
    renewer.cancel()
    await asyncio.sleep(1.0)  # past the 0.9 s deadline, nothing tried (frozen)
    lease._unreachable_now(TimeoutError("the reply of a write sent before the freeze"))
    assert not lease.held
    assert "renewal overdue" in lease.lost_reason
    assert bucket.keys[lease.key].revision == lease.token
