"""A shard worker's input from the party's log: share parts into its store, progress notices.

With ``jetstream:`` set, the party process is shard worker ``shard`` and takes
no uploads itself. :class:`LogFeed`:

* pulls its shard's parts through the durable consumer ``tecc-shard-<k>``
  (filter ``tecc.shares.<k>.>``), inserts them through the
  :class:`~cloud_tecc.party.writer.GroupWriter` (group commit) and acks each
  message only after its SQLite transaction committed; a redelivery after a
  crash finds the (gateway, seq) in the store and stores nothing twice;
* reads ``TECC_PROGRESS`` (an ordered consumer starting at the newest notice
  per gateway), re-verifies each notice and feeds the
  :class:`~cloud_tecc.party.epochs.ProgressTracker` — but only once every share
  part published before the notice reached it is in the store: a notice
  received at (monotonic) time *w* waits until, at a moment after *w*, the
  shard had nothing pending and everything delivered was committed: a fetch
  came back empty or left nothing pending, or the consumer's info (asked when
  a notice arrives) shows no pending and no unacked message. A gateway sends
  its notice only after the acks of the batches it covers, so their parts are
  in the log before the notice; without the gate a lagging consumer would let
  an epoch close before its data was stored.

With a shard lease (docs/CLOUD.md "Leases and takeover") the feed runs only while
this worker holds the lease, and each term reads through its own consumer
``tecc-shard-<k>-t<token>`` from the start of the stream's retention — or, when the
worker followed the log as standby (:mod:`cloud_tecc.party.follower`), from just
after the floor through which its store holds the shard: the worker's
store may be empty or stale (another worker consumed meanwhile) and the store's
dedup drops what it holds; a consumer of an earlier term, left by a frozen owner,
can never take a message from this term's, and the server removes it after
:data:`INACTIVE_S`. Parts published before the term began are history: stored
without counting them as new or late readings (their epochs were computed by the
previous owner).

Malformed log messages are counted (``tecc_log_malformed_total``), logged
and terminated (never redelivered); the worker carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.jetstream.server import NatsDeployment, start_node
from cloud_tecc.jetstream.sharelog import (
    SHARES,
    MalformedPartError,
    ShareLog,
    decode_part,
)
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.store import BatchRow, InsertResult, ShareStore
from cloud_tecc.party.writer import GroupWriter
from cloud_tecc.service.health import LogHealth
from cloud_tecc.tasks import check_cancelled
from tecc_contract.errors import FrameError, SignatureError
from tecc_contract.progress import open_progress

log = logging.getLogger("cloud_tecc.party.logfeed")
FETCH: Final = 256
#: A part delivered but never received (a fetch's answer lost when a node or the
#: connection dies mid-flight) stays unacked until the server redelivers it, this
#: long after the delivery; meanwhile the epoch it belongs to cannot close (the
#: parties' batch lists differ), so this bounds that stall. A part whose commit
#: takes longer is delivered twice and the store's dedup drops the second copy.
ACK_WAIT_S: Final = 5.0
#: Notices kept per gateway while its shares are still being read.
MAX_WAITING: Final = 64
_RETRY_S: Final = 0.5
#: How long a fetch waits for new parts; while progress notices wait for the gate.
FETCH_S: Final = 1.0
NOTICE_FETCH_S: Final = 0.1
_NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
#: A term's consumer left behind (its owner died or stood down) is removed after this.
INACTIVE_S: Final = 120.0


def durable_name(shard: int) -> str:
    """The durable consumer of shard ``shard``."""
    return f"tecc-shard-{shard}"


def embedded_port_file(state_dir: Path) -> Path:
    """Where the embedded node's client port is kept (frontends on this host read it)."""
    return state_dir / "nats" / "embedded.port"


def _stop_stale(node_dir: Path) -> None:
    """SIGKILL the embedded node a killed party process left behind (its pid file names it)."""
    pid_file = node_dir / "embedded.pid"
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(node_dir).encode() not in cmdline:  # not ours (the pid was reused)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


def start_embedded(cfg: JetStreamConfig, state_dir: Path) -> NatsDeployment:
    """Start the party's one embedded node under ``<state_dir>/nats`` (same port every run)."""
    node_dir = state_dir / "nats"
    port_file = embedded_port_file(state_dir)
    port: int | None = None
    if cfg.servers:
        port = nats_port(cfg.servers[0])
    elif port_file.exists():
        port = int(port_file.read_text())
    _stop_stale(node_dir)
    dep = start_node(node_dir, port=port)
    node = dep.nodes[0]
    port_file.write_text(str(node.spec.port))
    if node.process is not None:
        (node_dir / "embedded.pid").write_text(str(node.process.pid))
    log.info("embedded JetStream node on %s:%d", node.spec.host, node.spec.port)
    return dep


def nats_port(url: str) -> int:
    """The port of a ``nats://`` URL (4222 when it names none)."""
    tail = url.rsplit("@", 1)[-1].split("//", 1)[-1]
    _, _, port = tail.partition(":")
    return int(port.split("/")[0]) if port else 4222


class LogFeed:
    """Feeds one shard worker from the party's JetStream."""

    def __init__(
        self,
        *,
        cfg: JetStreamConfig,
        state_dir: Path,
        shard: int,
        service_id: str,
        store: ShareStore,
        writer: GroupWriter,
        tracker: ProgressTracker,
        keys: Mapping[str, Ed25519PublicKey],
        stored: Callable[[BatchRow, str], None],
        registry: CollectorRegistry,
    ) -> None:
        self.cfg, self.state_dir, self.shard = cfg, state_dir, shard
        self.service_id = service_id
        self.store, self.writer, self.tracker = store, writer, tracker
        self.keys, self.stored = keys, stored
        self.log: ShareLog | None = None
        #: The lease token of the current term (0: no lease, the shared durable consumer).
        self.term = 0
        #: Last TECC_SHARES sequence when the term began (history up to it).
        self.history_seq = 0
        #: The stream sequence the term's consumer starts at (1: the start of the log).
        self.start_seq = 1
        #: monotonic time at which the share consumer last had nothing pending
        self.caught_up = 0.0
        self._t0, self._connected_s, self._told = 0.0, 0.0, True  # a term's start (run)
        #: The shard's parts not consumed yet, as the last fetch or consumer info said
        #: (None before the first answer of this term).
        self.pending: int | None = None
        #: Log timestamp (ns) of the part consumed last, and when this term began.
        self.last_part_ns: int | None = None
        self.started_ns = 0
        #: per gateway, notices waiting for their shares: (through, heard, seen at)
        self._notices: dict[str, list[tuple[int, int, float]]] = {}
        self.malformed = Counter(
            "tecc_log_malformed",
            "Log messages that are not a valid share part or notice (skipped)",
            ["stream"],
            registry=registry,
        )
        self.replays = Counter(
            "tecc_log_replays",
            "Share parts whose (gateway, seq) was stored with different content (skipped)",
            registry=registry,
        )
        self.parts = Counter(
            "tecc_log_parts", "Share parts consumed, by outcome", ["outcome"], registry=registry
        )
        self.lag = Gauge(
            "tecc_log_pending", "Share parts of this shard not yet consumed", registry=registry
        )
        self.lost = Counter(
            "tecc_log_deliveries_lost",
            "Share part deliveries this worker never received (gaps in the consumer's "
            "delivery sequence); the server redelivers them after the ack wait",
            registry=registry,
        )
        #: The consumer delivery sequence expected next (None: not known for this
        #: subscription yet).
        self._next_delivery: int | None = None
        for stream in ("shares", "progress"):
            self.malformed.labels(stream)

    async def run(self, term: int = 0, start_seq: int = 1) -> None:
        """Connect (retrying), ensure the streams, then consume for ever.

        ``term`` > 0: a lease term (its token); consume from stream sequence
        ``start_seq``: the start of the log, or the floor through which a standby's
        follower (:mod:`cloud_tecc.party.follower`) stored the shard, plus one.
        """
        self.term, self.caught_up, self._notices = term, 0.0, {}
        self.start_seq = start_seq
        self.pending, self.last_part_ns, self.started_ns = None, None, time.time_ns()
        name = f"worker-{self.service_id}-{self.shard}"
        self._t0, self._told = time.monotonic(), not term
        self.log = await ShareLog.open(self.cfg, self.state_dir, name, _RETRY_S)
        self._connected_s = time.monotonic() - self._t0
        if term:
            while True:
                try:
                    info = await self.log.js.stream_info(SHARES)
                    self.history_seq = int(info.state.last_seq or 0)
                    break
                except _NATS_ERRORS as exc:
                    log.warning("share stream info: %s; retrying", type(exc).__name__)
                    await asyncio.sleep(_RETRY_S)
        await asyncio.gather(self._consume_shares(self.log), self._consume_progress(self.log))

    async def close(self) -> None:
        """Close the connection."""
        if self.log is not None:
            await self.log.close()

    def consumer(self) -> str:
        """The share consumer this feed reads through: the term's own, or the shard's durable."""
        name = durable_name(self.shard)
        return f"{name}-t{self.term}" if self.term else name

    async def _subscription(self, sharelog: ShareLog) -> nats.js.JetStreamContext.PullSubscription:
        js, name = sharelog.js, durable_name(self.shard)
        if self.term:
            return await js.pull_subscribe(
                f"tecc.shares.{self.shard}.>",
                durable=self.consumer(),
                stream=SHARES,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=(
                        DeliverPolicy.BY_START_SEQUENCE if self.start_seq > 1 else DeliverPolicy.ALL
                    ),
                    opt_start_seq=self.start_seq if self.start_seq > 1 else None,
                    ack_wait=ACK_WAIT_S,
                    max_ack_pending=4 * FETCH,
                    max_deliver=-1,
                    inactive_threshold=INACTIVE_S,
                ),
            )
        if self.store.batch_count() == 0 and self.store.watermark() == 0:
            # a new store (a fresh host): read the shard from the start of the log
            with contextlib.suppress(nats.js.errors.NotFoundError):
                info = await js.consumer_info(SHARES, name)
                if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) > 0:
                    log.warning("empty share store: replaying shard %d from the log", self.shard)
                    await js.delete_consumer(SHARES, name)
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=4 * FETCH,
            max_deliver=-1,
        )
        return await js.pull_subscribe(
            f"tecc.shares.{self.shard}.>", durable=name, stream=SHARES, config=config
        )

    async def _consume_shares(self, sharelog: ShareLog) -> None:
        sub = None
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                if sub is None:
                    sub = await self._subscription(sharelog)
                    self._next_delivery = None
                issued = time.monotonic()
                # notices waiting while nothing is pending (their arrival raced the last
                # drained fetch, whose acks the consumer had not counted yet): the next
                # fetch that finds nothing applies them, so let it end soon
                wait_s = NOTICE_FETCH_S if self._notices else FETCH_S
                try:
                    msgs = await sub.fetch(FETCH, timeout=wait_s)
                except TimeoutError:
                    # nats.errors.TimeoutError (the lingering pull expired, as before),
                    # or the plain one nats-py raises when its no-wait probe was answered
                    # "no messages" and the deadline ran out before the lingering pull
                    # (nats/js/client.py _fetch_n): nothing pending when it was served
                    self.lag.set(0)
                    self.pending = 0
                    await self._drained(sharelog, issued)  # nothing pending when served
                    continue
                if not msgs:
                    continue
                self._count_lost(msgs)
                await self._store(msgs)
                pending = msgs[-1].metadata.num_pending
                self.lag.set(pending)
                self.pending = pending
                self.last_part_ns = int(msgs[-1].metadata.timestamp.timestamp() * 1e9)
                if pending == 0:
                    await self._drained(sharelog, issued)
                else:
                    self._apply_notices()
            except _NATS_ERRORS as exc:
                log.warning("share consumer: %s %s; retrying", type(exc).__name__, exc)
                await asyncio.sleep(_RETRY_S)
            except Exception as exc:  # a defect must not stop the shard: log, resubscribe
                log.error("share consumer failed (%s); resubscribing", type(exc).__name__)
                sub = None
                await asyncio.sleep(_RETRY_S)

    def _count_lost(self, msgs: list[Msg]) -> None:
        """Count and log deliveries that never arrived: a jump in the consumer sequence.

        Every delivery (a redelivery too) takes the consumer's next sequence, and
        this worker is the consumer's only reader, so a jump means the server
        delivered parts that this worker never received; they come back after
        :data:`ACK_WAIT_S`, and until then their epoch waits.
        """
        for msg in msgs:
            seq = msg.metadata.sequence.consumer
            if seq is None:
                continue
            expected = self._next_delivery
            if expected is not None and seq > expected:
                self.lost.inc(seq - expected)
                log.warning(
                    "shard %d: %d share part deliveries never arrived (consumer sequence "
                    "%d to %d); the log redelivers them within %.0f s",
                    self.shard,
                    seq - expected,
                    expected,
                    seq - 1,
                    ACK_WAIT_S,
                )
            if expected is None or seq >= expected:
                self._next_delivery = seq + 1

    async def _store(self, msgs: list[Msg]) -> None:
        """Insert the valid parts in one group commit; ack each after the commit."""
        rows: list[tuple[Msg, BatchRow]] = []
        for msg in msgs:
            try:
                shard, row = decode_part(msg.data)
                if shard != self.shard:
                    raise MalformedPartError(f"a part of shard {shard} on shard {self.shard}")
            except MalformedPartError as exc:
                self.malformed.labels("shares").inc()
                log.warning("log message %s skipped: %s", msg.subject, exc)
                await msg.term()
                continue
            rows.append((msg, row))
        history = [msg.metadata.sequence.stream <= self.history_seq for msg, _ in rows]
        results = await asyncio.gather(
            *(self.writer.submit(row) for _, row in rows), return_exceptions=True
        )
        for (msg, row), outcome, old in zip(rows, results, history, strict=True):
            if isinstance(outcome, BaseException):  # not stored: redelivered later
                log.warning("share part not stored (%s); redelivery", type(outcome).__name__)
                await msg.nak(delay=1.0)
                continue
            self.parts.labels(outcome).inc()
            if outcome == InsertResult.REPLAY:
                self.replays.inc()
                log.warning(
                    "batch %d of %r: stored with other content; this part skipped (replay)",
                    row.seq,
                    row.gateway,
                )
            else:  # history: the previous owner counted it (and computed its epochs)
                self.stored(row, InsertResult.DUPLICATE if old else outcome)
            await msg.ack()

    async def _consume_progress(self, sharelog: ShareLog) -> None:
        while True:
            check_cancelled()
            try:
                sub = await sharelog.subscribe_progress()
                async for msg in sub.messages:
                    self._notice(msg)
                    if self._notices:
                        await self._check_caught_up(sharelog)
            except _NATS_ERRORS as exc:
                log.warning("progress consumer: %s %s; retrying", type(exc).__name__, exc)
                await asyncio.sleep(_RETRY_S)
            except Exception as exc:  # a defect must not stop the shard: log, resubscribe
                log.error("progress consumer failed (%s); resubscribing", type(exc).__name__)
                await asyncio.sleep(_RETRY_S)

    async def _drained(self, sharelog: ShareLog, issued: float) -> None:
        """A fetch issued at ``issued`` left nothing pending: apply the notices that
        arrived before it; for any that arrived since (a takeover's notices come while
        its history is read) ask the consumer now instead of waiting for the next
        fetch's 1 s timeout or the next notice."""
        self.caught_up = max(self.caught_up, issued)
        self._apply_notices()
        if self._notices:
            await self._check_caught_up(sharelog)
        if not self._told:  # a term's feed, once: how long its start took (docs/CLOUD.md)
            self._told = True
            log.info(
                "shard %d: term %d's log feed caught up %.3f s after its start (connected in "
                "%.3f s; the share stream was at sequence %d, read from %d)",
                self.shard,
                self.term,
                time.monotonic() - self._t0,
                self._connected_s,
                self.history_seq,
                self.start_seq,
            )

    async def _check_caught_up(self, sharelog: ShareLog) -> None:
        """Ask the consumer now: nothing pending and nothing unacked → caught up (no wait
        for the share consumer's next idle fetch)."""
        asked = time.monotonic()
        try:
            info = await sharelog.js.consumer_info(SHARES, self.consumer())
        except _NATS_ERRORS:
            return  # the share consumer's own fetches still move the gate
        if not self.term:  # this is the shard's durable consumer, the one consuming now
            self.pending = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            self.caught_up = max(self.caught_up, asked)
            self._apply_notices()

    def _notice(self, msg: Msg) -> None:
        try:
            notice = open_progress(msg.data, self.keys)
        except (SignatureError, FrameError) as exc:
            self.malformed.labels("progress").inc()
            log.warning("progress log message skipped: %s", exc)
            return
        if notice.cluster_id != self.service_id:
            self.malformed.labels("progress").inc()
            log.warning("progress log message for cluster %r skipped", notice.cluster_id)
            return
        heard = int(msg.metadata.timestamp.timestamp() * 1e9)
        waiting = self._notices.setdefault(notice.gateway_id, [])
        waiting.append((notice.through_ns, heard, time.monotonic()))
        del waiting[:-MAX_WAITING]  # older ones are covered by the newer notices
        self._apply_notices()

    def _apply_notices(self) -> None:
        """Feed the tracker the notices whose share parts are all in the store."""
        for gw, waiting in list(self._notices.items()):
            ready = [n for n in waiting if n[2] <= self.caught_up]
            if ready:
                through, heard = max(n[0] for n in ready), max(n[1] for n in ready)
                self.tracker.add(gw, heard)
                self.tracker.note(gw, through, heard)
                waiting[:] = [n for n in waiting if n[2] > self.caught_up]
            if not waiting:
                del self._notices[gw]

    def lag_s(self, now_ns: int) -> float | None:
        """Consumer lag in seconds: 0 with nothing pending, else the age of the part consumed
        last (or of the term, before the first); None while no consumer runs."""
        if self.log is None or self.pending is None:
            return None
        if self.pending == 0:
            return 0.0
        since = self.last_part_ns if self.last_part_ns is not None else self.started_ns
        return round(max(0, now_ns - since) / 1e9, 3)

    def health(self, now_ns: int | None = None) -> LogHealth:
        """For ``/healthz``: shard, connection, notices waiting, consumer lag."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        running = self.log is not None
        return LogHealth(
            shard=self.shard,
            connected=self.log is not None and self.log.nc.is_connected,
            notices_waiting=sum(len(w) for w in self._notices.values()),
            caught_up_s_ago=round(time.monotonic() - self.caught_up, 3) if self.caught_up else None,
            pending_parts=self.pending if running else None,
            lag_s=self.lag_s(now_ns),
            last_part_ns=self.last_part_ns,
        )
