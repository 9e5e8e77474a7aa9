"""A shard's lease in the party's ``tecc_leases`` bucket: one owner at a time, moved within seconds.

Usage (the supervisor of :mod:`.standby` does the rest)::

    async with Lease(js, shard=k, worker_id="worker-a", ttl_s=3) as lease:
        token = await lease.acquire()       # waits as standby until this worker owns shard k
        ... act only while lease.held ...   # await lease.wait_lost() to learn of a loss

The argument in full is docs/CLOUD.md "Leases and takeover"; in short:

- Every write carries ``Nats-TTL: <ttl_s>s`` (NATS 2.11 per-message TTL, ADR-43/48):
  the stream leader removes the key ``ttl_s`` after *its* timestamp, so "expired"
  means "absent" and one clock decides it. History 1: no older revision comes
  back. TTLs are whole seconds (nats-server 2.15.1), hence ``ttl_s: int``.
- Acquire and renew are compare-and-set on the key's revision
  (``Nats-Expected-Last-Subject-Sequence``): of two contenders that saw the key
  absent the stream leader refuses the second. No interleaving gives two owners.
- The holder counts its TTL from *sending* its last successful renewal
  (monotonic), minus a guard, so it stops before the server can expire the key;
  one woken from SIGSTOP finds ``held`` false before anything else runs.
- The fencing token is the revision of the acquiring write (sequences only
  grow); committed state refuses older tokens (:mod:`.commits`).
- Grace (``grace_s``, "Riding out a leader election"): while every renewal since
  the last success failed *transiently* (timeout, no stream leader — not a
  refused compare-and-set) the term lasts ``grace_s`` past the deadline. If the
  key expired meanwhile, the refused renewal is answered by a *rejoin*: the same
  record written with the compare-and-set on the key's absent state, the token
  unchanged, so it lands only if no other worker's record is there. Safety does
  not rest on the grace: whoever acquired in between has a higher token and
  fences us at its ``claim``; commits stay the compare-and-set of :mod:`.commits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType

import msgspec
from nats.js import JetStreamContext

from cloud_tecc.jetstream.kv import (
    LEASES_BUCKET,
    TRANSIENT,
    Bucket,
    KVError,
    RevisionChangedError,
    decode,
    open_bucket,
    shard_key,
)
from cloud_tecc.jetstream.leaserecord import (
    LeaseRecord,
    LeaseState,
    check_lease_args,
    standby_poll_s,
)
from cloud_tecc.tasks import check_cancelled

__all__ = ["Lease", "LeaseRecord", "LeaseState"]

log = logging.getLogger(__name__)

_GRACE_RETRY_S = 0.05  # renewal retries past the deadline: be first once a leader serves


class Lease:
    """One worker's claim on one shard's lease key (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        shard: int,
        worker_id: str,
        ttl_s: int = 3,
        replicas: int = 1,
        poll_s: float = 0.2,
        grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        check_lease_args(shard=shard, worker_id=worker_id, ttl_s=ttl_s, grace_s=grace_s)
        self.js = js
        self.shard = shard
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.rejoins = 0  # terms kept by a rejoin after the key expired in the grace
        self.renew_s = ttl_s / 3
        self.guard_s = max(0.1, ttl_s / 10)
        self.key = shard_key(shard)
        self._clock = clock
        self._wall_ns = wall_ns
        self._bucket: Bucket | None = None
        self.state = LeaseState.STANDBY
        self.token = 0  # fencing token: revision of the acquiring write (0 = never held)
        self.revision = 0  # revision of our last successful write
        self.lost_reason = ""
        self.previous_end_ns: int | None = None  # wall ns the previous term ended (if seen)
        self._record: LeaseRecord | None = None
        self._deadline = 0.0
        self._unreachable = False  # every renewal since the last success failed transiently
        self._acquired_at = 0.0
        self._ended = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._seen_other: LeaseRecord | None = None
        self._pending: LeaseRecord | None = None  # our acquiring write in flight
        self._pending_sent = 0.0
        self._on_lost: list[Callable[[str], None]] = []

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    async def open(self) -> None:
        """Create/check the ``tecc_leases`` bucket (idempotent)."""
        if self._bucket is None:
            self._bucket = await open_bucket(self.js, LEASES_BUCKET, replicas=self.replicas)

    @property
    def bucket(self) -> Bucket:
        """The lease bucket (after :meth:`open`)."""
        if self._bucket is None:
            raise KVError("Lease used before open(): use `async with Lease(...) as lease`")
        return self._bucket

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` synchronously the moment a held lease is lost."""
        self._on_lost.append(callback)

    def abandon(self, reason: str) -> None:
        """End the current term here and now (e.g. a fenced write showed a newer owner)."""
        self._lose(reason)

    # -- what the holder asks ---------------------------------------------------------

    def _end(self) -> float:
        """When the term ends on our clock: the deadline, plus the grace while unreachable."""
        return self._deadline + (self.grace_s if self._unreachable else 0.0)

    @property
    def held(self) -> bool:
        """Whether this worker owns the shard *now* (an overdue renewal loses it here)."""
        if self.state is LeaseState.HELD and self._clock() >= self._end():
            if self._unreachable and self.grace_s > 0:
                self._lose(f"lease bucket unreachable beyond the TTL and grace {self.grace_s} s")
            else:
                self._lose("renewal overdue: no renewal succeeded within the TTL")
        return self.state is LeaseState.HELD

    def valid(self) -> bool:
        """Like :attr:`held` but without ending the term (safe from a metrics thread)."""
        return self.state is LeaseState.HELD and self._clock() < self._end()

    @property
    def in_grace(self) -> bool:
        """Held past the deadline because the bucket is unreachable (a leader election)."""
        return self.valid() and self._clock() >= self._deadline

    @property
    def age_s(self) -> float:
        """Seconds since this worker acquired the lease (0 when not held)."""
        return self._clock() - self._acquired_at if self.valid() else 0.0

    async def wait_lost(self) -> str:
        """Wait until the current term ends (lost or released); the reason."""
        while self.state is LeaseState.HELD:
            remaining = self._end() - self._clock()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), max(remaining, 0.0) + 0.001)
            _ = self.held  # a frozen renewer still ends the term at the deadline
        return self.lost_reason

    async def holder(self) -> LeaseRecord | None:
        """The current owner's record as stored (None when free)."""
        stored = await self.bucket.get(self.key)
        if stored is None or stored.value is None:
            return None
        return decode(stored.value, LeaseRecord, bucket=self.bucket.name, key=self.key)

    # -- acquire, renew, release ---------------------------------------------------------

    async def try_acquire(self) -> bool:
        """Take the lease if it is free (absent, expired or released); whether held now."""
        if self.held:
            return True
        stored = await self.bucket.get(self.key)
        expected = 0
        previous_end_ns: int | None = None
        if stored is not None:
            expected = stored.revision
            if stored.value is not None:
                try:
                    other = decode(stored.value, LeaseRecord, bucket=self.bucket.name, key=self.key)
                except KVError as exc:
                    log.error("shard %d: %s; waiting for it to expire", self.shard, exc)
                    return False
                if other.worker_id == self.worker_id and other.acquired_ns == self._pending_ns():
                    # Our acquiring write landed but its reply was lost: adopt it.
                    self._became_held(stored.revision, other, self._pending_sent)
                    self.previous_end_ns = None
                    return True
                self._seen_other = other
                return False
            previous_end_ns = self._released_at(stored.marker)
        elif self._seen_other is not None:  # it expired since we saw it
            previous_end_ns = self._seen_other.renewed_ns + self._seen_other.ttl_s * 10**9
        now = self._wall_ns()
        record = LeaseRecord(
            worker_id=self.worker_id, acquired_ns=now, renewed_ns=now, ttl_s=self.ttl_s
        )
        self._pending, self._pending_sent = record, self._clock()
        try:
            revision = await self.bucket.write(
                self.key, msgspec.json.encode(record), expected=expected, ttl_s=self.ttl_s
            )
        except RevisionChangedError:
            return False
        self._became_held(revision, record, self._pending_sent)
        self.previous_end_ns = previous_end_ns
        return True

    def _pending_ns(self) -> int:
        return -1 if self._pending is None else self._pending.acquired_ns

    def _released_at(self, raw: bytes) -> int | None:
        if raw:
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                rec = msgspec.json.decode(raw, type=LeaseRecord)
                return rec.released_ns or None
        return None

    async def acquire(self) -> int:
        """Wait as standby until this worker owns the shard; the fencing token."""
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                if await self.try_acquire():
                    return self.token
            except TRANSIENT as exc:
                log.debug("shard %d: lease bucket unreachable (%r)", self.shard, exc)
            await asyncio.sleep(standby_poll_s(self._seen_other, self.poll_s, self._wall_ns()))

    def _became_held(self, revision: int, record: LeaseRecord, sent_at: float) -> None:
        self.state = LeaseState.HELD
        self.token = self.revision = revision
        self._record = record
        self._pending = None
        self._acquired_at = self._clock()
        self._deadline = sent_at + self.ttl_s - self.guard_s
        self._unreachable = False
        self.lost_reason = ""
        self._seen_other = None
        self._ended = asyncio.Event()
        self._renewer = asyncio.create_task(self._renew(), name=f"lease-renew-{self.shard}")
        log.info("shard %d: lease acquired by %s (token %d)", self.shard, self.worker_id, revision)

    def _lose(self, reason: str) -> None:
        if self.state is not LeaseState.HELD:
            return
        self.state = LeaseState.LOST
        self.lost_reason = reason
        self._ended.set()
        log.warning("shard %d: lease lost by %s: %s", self.shard, self.worker_id, reason)
        for callback in self._on_lost:
            try:
                callback(reason)
            except Exception:  # a failing observer must not keep the holder acting
                log.exception("shard %d: on_lost callback failed", self.shard)

    async def _renew(self) -> None:
        next_at = self._clock() + self.renew_s
        while self.held:
            await asyncio.sleep(max(0.0, min(next_at, self._end()) - self._clock()))
            if not self.held:
                return
            sent_at = self._clock()
            record = msgspec.structs.replace(self._record_or_fail(), renewed_ns=self._wall_ns())
            try:
                revision = await self.bucket.write(
                    self.key,
                    msgspec.json.encode(record),
                    expected=self.revision,
                    ttl_s=self.ttl_s,
                    timeout_s=self._write_timeout(sent_at),
                )
            except RevisionChangedError:
                try:
                    kept = await self._adopt_own_write() or await self._rejoin()
                except TRANSIENT as exc:
                    next_at = self._unreachable_now(exc)
                    continue
                if not kept:
                    self._lose("revision changed: another worker owns the shard, or it expired")
                    return
                continue
            except TRANSIENT as exc:
                next_at = self._unreachable_now(exc)
                continue
            if self.state is not LeaseState.HELD:
                return
            self._renewed(revision, record, sent_at)
            next_at = sent_at + self.renew_s

    def _write_timeout(self, sent_at: float) -> float:
        """Before the deadline up to a renewal period (so a timeout is seen before it and
        opens the grace); in the grace at most a second a try (a new leader is used soon)."""
        if sent_at < self._deadline:
            return max(0.05, min(self._deadline - sent_at, self.renew_s))
        return max(0.05, min(1.0, self._end() - sent_at))

    def _unreachable_now(self, exc: BaseException) -> float:
        """A transient failure: the grace applies; when to try again.

        Only a failure seen before the deadline opens the grace: one that shows up
        after it (a renewal in flight when the process was frozen) is overdue.
        """
        if not self._unreachable:
            log.warning("shard %d: renewal failed (%r); retrying", self.shard, exc)
            self._unreachable = self._clock() < self._deadline
        past = self._clock() >= self._deadline
        return self._clock() + (_GRACE_RETRY_S if past else min(self.poll_s, self.renew_s))

    def _renewed(self, revision: int, record: LeaseRecord, sent_at: float) -> None:
        self.revision, self._record = revision, record
        self._deadline = sent_at + self.ttl_s - self.guard_s
        self._unreachable = False

    async def _rejoin(self) -> bool:
        """In the grace the key expired: write it again iff nobody else's record is there.

        The compare-and-set expects the key absent (or its expiry marker), as an
        acquire does; the record (``acquired_ns``) and the token stay ours. A
        release marker means another worker held a term in between: not ours.
        """
        if not self._unreachable:
            return False
        stored = await self.bucket.get(self.key)
        if stored is not None and (stored.value is not None or self._released_at(stored.marker)):
            return False
        sent_at = self._clock()
        record = msgspec.structs.replace(self._record_or_fail(), renewed_ns=self._wall_ns())
        try:
            revision = await self.bucket.write(
                self.key,
                msgspec.json.encode(record),
                expected=0 if stored is None else stored.revision,
                ttl_s=self.ttl_s,
                timeout_s=self._write_timeout(sent_at),
            )
        except RevisionChangedError:
            return await self._adopt_own_write()  # ours after all (a lost reply) or not
        if self.state is not LeaseState.HELD:
            return False
        self._renewed(revision, record, sent_at)
        self.rejoins += 1
        log.warning(
            "shard %d: lease key expired while its bucket was unreachable; rejoined by %s "
            "(token %d kept, revision %d)",
            self.shard, self.worker_id, self.token, revision,
        )  # fmt: skip
        return True

    def _record_or_fail(self) -> LeaseRecord:
        if self._record is None:
            raise KVError(f"shard {self.shard}: renewing a lease that was never acquired")
        return self._record

    async def _adopt_own_write(self) -> bool:
        """After a refused renewal: is the stored record still our term (a lost reply)?"""
        try:
            stored = await self.bucket.get(self.key)
        except TRANSIENT:
            return False
        if stored is None or stored.value is None:
            return False
        try:
            rec = decode(stored.value, LeaseRecord, bucket=self.bucket.name, key=self.key)
        except KVError:
            return False
        mine = self._record_or_fail()
        if rec.worker_id != self.worker_id or rec.acquired_ns != mine.acquired_ns:
            return False
        self.revision, self._record = stored.revision, rec
        return True

    async def release(self) -> None:
        """Hand the lease over now (clean stop): stop renewing, write a delete marker.

        The caller must have stopped acting first. The marker is a compare-and-set
        on our last revision, so it never deletes a newer owner's lease.
        """
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if self.state is not LeaseState.HELD:
            return
        self.state = LeaseState.RELEASED
        self.lost_reason = "released"
        self._ended.set()
        for _ in range(2):  # once more if a renewal landed while it was being cancelled
            record = msgspec.structs.replace(self._record_or_fail(), released_ns=self._wall_ns())
            try:
                await self.bucket.write(
                    self.key, msgspec.json.encode(record), expected=self.revision, delete=True
                )
            except RevisionChangedError:
                if await self._adopt_own_write():
                    continue
                log.info("shard %d: lease already moved on; nothing to release", self.shard)
            except TRANSIENT as exc:
                log.warning("shard %d: release not written (%r); expires by TTL", self.shard, exc)
            else:
                log.info("shard %d: lease released by %s", self.shard, self.worker_id)
            return
