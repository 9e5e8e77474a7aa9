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
import logging
import time
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.jetstream.sharelog import SHARES, MalformedPartError, ShareLog, decode_part
from cloud_tecc.party.logfeed import ACK_WAIT_S, FETCH, FETCH_S, LogFeed
from cloud_tecc.party.store import InsertResult

log = logging.getLogger("cloud_tecc.party.follower")
_RETRY_S: Final = 0.5
_NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
#: The server removes a dead standby's consumer after this.
INACTIVE_S: Final = 30.0
#: The follower prunes its store at most this often.
PRUNE_EVERY_S: Final = 60.0


class LogFollower:
    """Follows shard ``feed.shard``'s parts into ``feed.store`` while the worker is standby."""

    def __init__(self, feed: LogFeed, *, retention_s: float, registry: CollectorRegistry) -> None:
        self.feed, self.retention_s = feed, retention_s
        #: Every part of the shard with stream sequence ≤ floor is in the store.
        self.floor = 0
        self._log: ShareLog | None = None
        self._sub: nats.js.JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._pruned = 0.0
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
        """True while the follow loop runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Begin following (a no-op while it runs)."""
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="standby-follower")

    async def handoff(self) -> int:
        """Stop following; the stream sequence the term's consumer starts from (≥ 1)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sub = self._sub
        if sub is not None:
            try:
                info = await sub.consumer_info()
                if info.ack_floor is not None:
                    self.floor = max(self.floor, int(info.ack_floor.stream_seq or 0))
            except _NATS_ERRORS as exc:
                log.info("shard %d: follower floor not read (%r)", self.feed.shard, exc)
        await self.close()
        self.floor_gauge.set(self.floor)
        return self.floor + 1

    async def close(self) -> None:
        """Drop the consumer and the connection (the server removes the consumer too)."""
        sub, self._sub = self._sub, None
        sharelog, self._log = self._log, None
        if sub is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()
        if sharelog is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await sharelog.close()

    async def _run(self) -> None:
        feed = self.feed
        name = f"follower-{feed.service_id}-{feed.shard}"
        while True:
            try:
                if self._log is None:
                    self._log = await ShareLog.open(feed.cfg, feed.state_dir, name, _RETRY_S)
                if self._sub is None:
                    self._sub = await self._subscribe(self._log)
                try:
                    msgs = await self._sub.fetch(FETCH, timeout=FETCH_S)
                except TimeoutError:  # nothing new (nats-py's and the plain one)
                    msgs = []
                if msgs:
                    await self._store(msgs)
                await self._prune()
            except _NATS_ERRORS as exc:
                log.info("shard %d: follower: %s; retrying", feed.shard, type(exc).__name__)
                await asyncio.sleep(_RETRY_S)
            except Exception as exc:  # a defect must not stop the standby: resubscribe
                log.error("shard %d: follower failed (%r); resubscribing", feed.shard, exc)
                await self.close()
                await asyncio.sleep(_RETRY_S)

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

    async def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        cutoff = time.time_ns() - int(self.retention_s * 1e9)
        await asyncio.to_thread(self.feed.store.prune_batches, cutoff)
