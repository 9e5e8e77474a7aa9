"""A standby worker follows its shard's share log into its own store while it waits.

Without it, a worker that takes a shard over reads the shard's whole history
(every part since the start of the stream's retention) through its term's
consumer before its first epoch can close: the progress gate
(:mod:`cloud_tecc.party.logfeed`) applies no notice until the consumer has
nothing pending. That grew with the log — 2.7 s for about 900 parts after 70 s
of the HA soak — and was the largest step of a takeover.

:class:`LogFollower` runs while the worker is standby (``jetstream.standby_follows``,
on by default). It reads ``tecc.shares.<k>.>`` through an ephemeral pull consumer
of its own, stores every part through the worker's group writer (the store
dedups) and acks each after its commit. At the handoff (:meth:`handoff`, the
lease just acquired) it stops and asks its consumer for the **ack floor**: the
stream sequence through which the server holds every message of the filter
acked, i.e. every part of the shard up to it is committed in this store (a part
whose insert failed was nak'd and holds the floor below it). The term's consumer
then starts at ``floor + 1`` and reads only what the follower had not, so the gate
opens after a few messages instead of the whole history.

The ack floor comes from the server, not from counting deliveries: a fetch that
timed out client-side may have been delivered and dropped, and later deliveries
would pass it. If the floor cannot be asked (JetStream away at that moment), the
term reads from the last floor that was read, or from the start of the stream.

Parts the follower stores are history (the owner counted them): they feed the
liveness tracker like a term's history does and count as nothing else. Malformed
parts are skipped without counting (the owner's feed counts them). The follower
prunes its store as the owner does (batches older than ``retention_s``), so a
standby's store stays the size of the owner's. Metrics:
``tecc_standby_log_floor`` (the last floor read), ``tecc_standby_parts_total``
(parts this follower stored, by outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.jetstream import epochlog
from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import TRANSIENT, KVError
from cloud_tecc.jetstream.sharelog import SHARES, MalformedPartError, ShareLog, decode_part
from cloud_tecc.party.logfeed import ACK_WAIT_S, FETCH, FETCH_S, LogFeed
from cloud_tecc.party.store import CommittedEpoch, InsertResult, ShareStore
from cloud_tecc.tasks import check_cancelled

log = logging.getLogger("cloud_tecc.party.follower")
_RETRY_S: Final = 0.5
#: The server removes a dead standby's consumer after this.
INACTIVE_S: Final = 30.0
#: How long a handoff waits for the follower to stop (it stops within a step).
STOP_WAIT_S: Final = 1.0
#: How often a following standby reads its consumer's ack floor.
FLOOR_EVERY_S: Final = 5.0
#: The follower prunes its store at most this often.
PRUNE_EVERY_S: Final = 60.0
#: How often the epoch follower reads the shard's commit record.
EPOCHS_EVERY_S: Final = 1.0


class _Stopped(Exception):  # noqa: N818 - a signal between batches, not an error
    """The epoch follower was asked to stop (between two batches)."""


def epoch_rows(batch: list[epochlog.EpochWire], released_ns: int) -> list[CommittedEpoch]:
    """The store's rows of logged epochs; result messages only of epochs after ``released_ns``."""
    return [
        (e.end_ns, epochlog.store_states(e.states), e.readings, e.done_ns,
         e.body if e.end_ns > released_ns else None)
        for e in batch
    ]  # fmt: skip


class EpochFollower:
    """While standby: apply the shard's *recorded* epochs to the store as the owner records them.

    Every :data:`EPOCHS_EVERY_S` it reads the commit record and applies the logged
    epochs after the last one applied through the record's ``log_seq``
    (:func:`~cloud_tecc.jetstream.epochlog.replay` with ``after_seq``). Applying a
    prefix now and the rest at the takeover is the takeover's whole replay, in
    the same order (module :mod:`cloud_tecc.jetstream.epochlog`), so the rebuilt
    store is the same; the takeover replays only what came after
    :attr:`applied_seq` and then drops the result messages the record says were
    released meanwhile. :meth:`stop` lets the batch being applied finish (its
    SQLite transaction runs in a thread, which a cancellation would not stop).
    """

    def __init__(self, store: ShareStore, shard: int) -> None:
        self.store, self.shard = store, shard
        #: The stream sequence of the last epoch message applied to the store.
        self.applied_seq = 0
        self._stopping = asyncio.Event()
        self._applying = False  # a batch's transaction runs in a thread
        self._task: asyncio.Task[None] | None = None

    def start(self, js: nats.js.JetStreamContext, commits: CommittedState) -> None:
        """Begin following (a no-op while it runs). A task still finishing its last batch
        (a stop that was itself cancelled) ends before the new one applies anything."""
        if self._task is not None and not self._stopping.is_set():
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(js, commits, self._stopping, self._task), name="epoch-follower"
        )

    async def stop(self) -> int:
        """Stop (after the batch being applied, if any); the sequence the takeover's replay
        continues after. Once it returns, the follower writes nothing more."""
        task = self._task
        if task is not None:
            self._stopping.set()
            if not self._applying:  # waiting on JetStream: cancel (the flag stops it too)
                task.cancel()
            await asyncio.wait({task})  # (a cancelled stop leaves the task to finish)
            if self._task is task:
                self._task = None
        return self.applied_seq

    async def _apply(
        self, batch: list[epochlog.EpochWire], *, released_ns: int, stopping: asyncio.Event
    ) -> None:
        if stopping.is_set():
            raise _Stopped
        self._applying = True
        try:
            await asyncio.to_thread(self.store.commit_epochs, epoch_rows(batch, released_ns))
        finally:
            self._applying = False

    def _applied(self, seq: int) -> None:
        self.applied_seq = max(self.applied_seq, seq)

    async def _run(
        self,
        js: nats.js.JetStreamContext,
        commits: CommittedState,
        stopping: asyncio.Event,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        while not stopping.is_set():
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                record = await commits.load()
                if record is not None and record.log_seq > self.applied_seq:
                    apply = functools.partial(
                        self._apply, released_ns=record.released_ns, stopping=stopping
                    )
                    await epochlog.replay(
                        js, self.shard, record.log_seq, apply,
                        after_seq=self.applied_seq, applied=self._applied,
                    )  # fmt: skip
                if record is not None and not stopping.is_set():
                    # results the output accepted: the owner dropped them, so does this store
                    self._applying = True
                    try:
                        await asyncio.to_thread(self.store.drop_released, record.released_ns)
                    finally:
                        self._applying = False
            except _Stopped:
                return
            except (*TRANSIENT, KVError) as exc:
                log.info("shard %d: epoch follower: %r; retrying", self.shard, exc)
            except Exception as exc:  # a defect must not stop the standby: log, go on
                log.error("shard %d: epoch follower failed (%r)", self.shard, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), EPOCHS_EVERY_S)


@dataclass(eq=False)
class _Session:
    """One follow session: its stop flag, connection and consumer (the task's own)."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    log: ShareLog | None = None
    sub: nats.js.JetStreamContext.PullSubscription | None = None
    #: dialling or creating its consumer: no cancellation then (nats-py leaves a
    #: half-open socket behind a cancelled connect); the flag stops it right after
    connecting: bool = False

    async def close(self) -> None:
        sub, self.sub = self.sub, None
        sharelog, self.log = self.log, None
        if sub is not None:
            with contextlib.suppress(*TRANSIENT):
                await sub.unsubscribe()
        if sharelog is not None:
            with contextlib.suppress(*TRANSIENT):
                await sharelog.close()


class LogFollower:
    """Follows shard ``feed.shard``'s parts into ``feed.store`` while the worker is standby.

    A session is stopped by its flag *and* a cancellation: Python 3.11's
    ``asyncio.wait_for`` (inside nats-py's connect and requests) can swallow a
    cancellation that arrives as the awaited call completes, and a follower that
    missed it must still stop — it checks the flag before every step. Cancelling
    it while it stores a batch is safe: the group writer commits in its own task,
    and a part whose ack was not sent holds the floor below it.
    """

    def __init__(self, feed: LogFeed, *, retention_s: float, registry: CollectorRegistry) -> None:
        self.feed, self.retention_s = feed, retention_s
        #: Every part of the shard with stream sequence ≤ floor is in the store.
        self.floor = 0
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._pruned = self._floored = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        self.floor_gauge = Gauge(
            "tecc_standby_log_floor",
            "Share stream sequence through which this standby's store holds its shard",
            registry=registry,
        )
        self.parts = Counter(
            "tecc_standby_parts",
            "Share parts a standby stored while following the log, by outcome",
            ["outcome"],
            registry=registry,
        )

    @property
    def running(self) -> bool:
        """True while a follow session runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Begin following (a no-op while a session runs)."""
        if self._session is None:
            session = _Session()
            self._session = session
            self._task = asyncio.create_task(self._follow(session), name="standby-follower")

    async def handoff(self) -> int:
        """Stop following; the stream sequence the term's consumer starts from (≥ 1).

        Shielded: a cancelled caller still leaves the session stopped and closed.
        """
        session, task = self._session, self._task
        self._session = self._task = None
        if session is not None and task is not None:
            await asyncio.shield(self._end(session, task))
        self.floor_gauge.set(self.floor)
        return self.floor + 1

    async def _end(self, session: _Session, task: asyncio.Task[None]) -> None:
        session.stop.set()
        if not session.connecting:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
        if done:
            await self._read_floor(session)
            await session.close()
            return
        log.warning(
            "shard %d: the follower did not stop within %.1f s; the term reads from the "
            "floor read last (%d)",
            self.feed.shard,
            STOP_WAIT_S,
            self.floor,
        )
        # it stops at its next step (after the connect); close its connection then
        closer = asyncio.create_task(self._close_after(session, task), name="follower-close")
        self._closing.add(closer)
        closer.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_after(session: _Session, task: asyncio.Task[None]) -> None:
        await asyncio.wait({task})
        await session.close()

    async def close(self) -> None:
        """Stop following and drop the consumer and the connection."""
        await self.handoff()

    async def _read_floor(self, session: _Session) -> None:
        if session.sub is None:
            return
        try:
            info = await session.sub.consumer_info()
        except nats.js.errors.NotFoundError:
            # the consumer is gone (inactive past its threshold in an outage, its node
            # lost): its fetches only time out (nats-py skips the 409), so subscribe again
            log.info(
                "shard %d: the follower's consumer is gone; subscribing again", self.feed.shard
            )
            sub, session.sub = session.sub, None
            with contextlib.suppress(*TRANSIENT):
                await sub.unsubscribe()
            return
        except TRANSIENT as exc:
            log.info("shard %d: follower floor not read (%r)", self.feed.shard, exc)
            return
        if info.ack_floor is not None:
            self.floor = max(self.floor, int(info.ack_floor.stream_seq or 0))
            self.floor_gauge.set(self.floor)

    async def _follow(self, session: _Session) -> None:
        feed = self.feed
        name = f"follower-{feed.service_id}-{feed.shard}"
        while not session.stop.is_set():
            check_cancelled()
            try:
                if session.log is None:
                    session.connecting = True
                    try:
                        session.log = await ShareLog.open(feed.cfg, feed.state_dir, name, _RETRY_S)
                    finally:
                        session.connecting = False
                    continue  # (the flag again: a lost cancellation)
                if session.sub is None:
                    session.connecting = True
                    try:
                        session.sub = await self._subscribe(session.log)
                    finally:
                        session.connecting = False
                    continue
                try:
                    msgs = await session.sub.fetch(FETCH, timeout=FETCH_S)
                except TimeoutError:  # nothing new (nats-py's and the plain one)
                    msgs = []
                if msgs and not session.stop.is_set():
                    await self._store(msgs)
                await self._upkeep(session)
            except TRANSIENT as exc:
                log.info("shard %d: follower: %s; retrying", feed.shard, type(exc).__name__)
                await self._pause(session)
            except Exception as exc:  # a defect must not stop the standby: resubscribe
                log.error("shard %d: follower failed (%r); resubscribing", feed.shard, exc)
                await session.close()
                await self._pause(session)

    @staticmethod
    async def _pause(session: _Session) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.stop.wait(), _RETRY_S)

    async def _upkeep(self, session: _Session) -> None:
        """Every :data:`FLOOR_EVERY_S` read the floor (a handoff that cannot read it, and
        the next session, start from there); every :data:`PRUNE_EVERY_S` prune the store
        as the owner does: batches older than ``retention_s`` before the watermark."""
        now = time.monotonic()
        if now - self._floored >= FLOOR_EVERY_S:
            self._floored = now
            await self._read_floor(session)
        if now - self._pruned >= PRUNE_EVERY_S:
            self._pruned = now
            watermark = self.feed.store.watermark()
            if watermark > 0:
                cutoff = watermark - int(self.retention_s * 1e9)
                await asyncio.to_thread(self.feed.store.prune_batches, cutoff)

    async def _subscribe(self, sharelog: ShareLog) -> nats.js.JetStreamContext.PullSubscription:
        start = self.floor + 1
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=4 * FETCH,
            max_deliver=-1,
            inactive_threshold=INACTIVE_S,
        )
        log.info("shard %d: standby follows the share log from sequence %d", self.feed.shard, start)
        return await sharelog.js.pull_subscribe(
            f"tecc.shares.{self.feed.shard}.>", stream=SHARES, config=config
        )

    async def _store(self, msgs: list[Msg]) -> None:
        """Insert the parts in one group commit, as history; ack each after the commit."""
        feed = self.feed
        rows = []
        for msg in msgs:
            try:
                shard, row = decode_part(msg.data)
                if shard != feed.shard:
                    raise MalformedPartError(f"a part of shard {shard} on shard {feed.shard}")
            except MalformedPartError:
                self.parts.labels("skipped").inc()
                await msg.ack()  # the owner's feed counts and logs it
                continue
            rows.append((msg, row))
        results = await asyncio.gather(
            *(feed.writer.submit(row) for _, row in rows), return_exceptions=True
        )
        for (msg, row), outcome in zip(rows, results, strict=True):
            if isinstance(outcome, BaseException):  # not stored: holds the floor below it
                await msg.nak(delay=1.0)
                continue
            self.parts.labels(outcome).inc()
            if outcome != InsertResult.REPLAY:
                feed.stored(row, InsertResult.DUPLICATE)  # history: the owner counts it
            await msg.ack()
