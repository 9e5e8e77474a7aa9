"""The party's durable share log on JetStream: streams, share parts on the wire, publish.

Streams (created or brought to the configured limits by :meth:`ShareLog.ensure_streams`):

* ``TECC_SHARES``, subjects ``tecc.shares.<shard>.<gateway>``: one message per
  shard part of an opened batch, ``Nats-Msg-Id`` ``<gateway>:<seq>:<shard>``
  (the stream drops a repeat within ``duplicate_window_s``), file storage,
  ``max_bytes`` / ``max_age_s`` / :data:`MAX_PART_BYTES` per message, discard
  *new* when full (a publish is refused rather than an old share lost),
  ``replicas`` copies.
* ``TECC_PROGRESS``, subjects ``tecc.progress.<gateway>``: the gateways' signed
  progress notices as received (short age, the newest per gateway kept).

A share part is ``b"\\x01"`` (the format version) followed by a msgpack array
(:class:`PartWire`; msgspec, never pickle). :func:`decode_part` refuses
anything malformed with :class:`MalformedPartError`. Every refusal by JetStream
(stream full, no quorum, no responders, timeout, connection down) surfaces as
one :class:`Overloaded` carrying a retry-after hint.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.errors import CloudError
from cloud_tecc.jetstream.server import USER, credential
from cloud_tecc.party.store import BatchRow, SegmentRow
from cloud_tecc.tasks import check_cancelled
from tecc_contract.errors import ContractError
from tecc_contract.scale import Scale

log = logging.getLogger("cloud_tecc.jetstream")

SHARES: Final = "TECC_SHARES"
PROGRESS: Final = "TECC_PROGRESS"
PART_VERSION: Final = 1
#: Largest share part (the nodes' max_payload is 8 MiB; headers need a little).
MAX_PART_BYTES: Final = 8 * 1024 * 1024 - 16 * 1024
#: Progress notices kept: this long, and at most this many per gateway.
PROGRESS_MAX_AGE_S: Final = 600.0
PROGRESS_PER_GATEWAY: Final = 16
#: Idle heartbeat of a worker's ordered consumer of TECC_PROGRESS (seconds). nats-py
#: recreates an ordered consumer that showed no activity for two heartbeats, checked
#: every two; its default of 5 s meant that after a JetStream node kill took the
#: consumer (R=1, memory) with it, notices stopped for up to 10–20 s after the
#: stream's new leader served, and epochs closed late (the HA soak's late windows
#: at node kills). At 0.5 s the consumer is recreated, retried every second, within
#: about a second of the new leader; the cost is an idle heartbeat per worker
#: every half second.
PROGRESS_HEARTBEAT_S: Final = 0.5
#: Retry-After hints (seconds) for a full stream and for an unreachable/slow JetStream.
#: "Down" is mostly a leader election after a node died (4–9 s in nats-server): the
#: gateways' next try comes at most this long after the new leader serves, so it is
#: short (a try costs a refused POST per endpoint).
RETRY_FULL_S: Final = 5
RETRY_DOWN_S: Final = 1
#: Store-failure code of a stream at its limits with discard new (maximum bytes exceeded).
_STORE_FAILED: Final = 10077
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

U64 = Annotated[int, msgspec.Meta(ge=0)]
I64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]


class Overloaded(CloudError):  # noqa: N818 - the name the layout fixes
    """JetStream did not take the message now; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int = RETRY_DOWN_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MalformedPartError(CloudError):
    """A log message is not a share part this build can read (counted and skipped)."""


def gateway_token(gateway: str) -> str:
    """``gateway`` as one subject token: itself if plain, else ``_`` + its UTF-8 in hex."""
    return gateway if _SAFE.fullmatch(gateway) else "_" + gateway.encode().hex()


def shares_subject(shard: int, gateway: str) -> str:
    """The subject of a shard part."""
    return f"tecc.shares.{shard}.{gateway_token(gateway)}"


def progress_subject(gateway: str) -> str:
    """The subject of a gateway's progress notices."""
    return f"tecc.progress.{gateway_token(gateway)}"


def msg_id(gateway: str, seq: int, shard: int) -> str:
    """The ``Nats-Msg-Id`` of a shard part (unambiguous: seq and shard are integers)."""
    return f"{gateway_token(gateway)}:{seq}:{shard}"


class SegmentWire(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One segment of a share part."""

    idx: Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)]
    sensor: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    ts: bytes
    x: bytes
    q: bytes | None
    scale_exp: int
    scale_off: float


class PartWire(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A shard part of one batch (version :data:`PART_VERSION`)."""

    shard: Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)]
    gateway: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    seq: U64
    digest: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    received_ns: I64
    count: Annotated[int, msgspec.Meta(ge=1)]
    min_ts: I64
    max_ts: I64
    has_q: bool
    segments: Annotated[list[SegmentWire], msgspec.Meta(min_length=1)]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(PartWire)


def encode_part(row: BatchRow, shard: int) -> bytes:
    """The log message of ``row`` (one shard's part)."""
    wire = PartWire(
        shard, row.gateway, row.seq, row.digest, row.received_ns, row.count, row.min_ts,
        row.max_ts, row.has_q,
        [
            SegmentWire(s.idx, s.sensor, s.ts, s.x, s.q, s.scale.exponent, s.scale.offset)
            for s in row.segments
        ],
    )  # fmt: skip
    return bytes([PART_VERSION]) + _ENCODER.encode(wire)


def _segment(s: SegmentWire, has_q: bool) -> tuple[SegmentRow, int, int, int]:
    n, rem = divmod(len(s.ts), 8)
    if rem or n == 0 or len(s.x) != len(s.ts):
        raise MalformedPartError(f"segment {s.idx}: ts and x must hold the same n >= 1 values")
    if (s.q is not None) != has_q or (s.q is not None and len(s.q) != len(s.ts)):
        raise MalformedPartError(f"segment {s.idx}: q must come exactly with has_q, n values")
    try:
        scale = Scale(s.scale_exp, s.scale_off)
    except ContractError as exc:
        raise MalformedPartError(f"segment {s.idx}: {exc}") from exc
    ts = np.frombuffer(s.ts, dtype="<i8")
    row = SegmentRow(s.idx, s.sensor, s.ts, s.x, s.q, scale)
    return row, n, int(ts.min()), int(ts.max())


def decode_part(data: bytes) -> tuple[int, BatchRow]:
    """``(shard, row)`` of a log message; :class:`MalformedPartError` says what is wrong."""
    if not data:
        raise MalformedPartError("empty share part")
    if data[0] != PART_VERSION:
        raise MalformedPartError(
            f"share part version {data[0]}, this build reads version {PART_VERSION} "
            "(a newer frontend wrote it: upgrade the workers first)"
        )
    try:
        w = _DECODER.decode(data[1:])
    except msgspec.DecodeError as exc:
        raise MalformedPartError(f"share part does not decode: {exc}") from exc
    segs = [_segment(s, w.has_q) for s in w.segments]
    if len({s.idx for s, *_ in segs}) != len(segs):
        raise MalformedPartError("share part repeats a segment index")
    if sum(n for _, n, _, _ in segs) != w.count:
        raise MalformedPartError(f"share part declares {w.count} readings, not its segments' count")
    if min(lo for *_, lo, _ in segs) != w.min_ts or max(hi for *_, hi in segs) != w.max_ts:
        raise MalformedPartError("share part's timestamp bounds do not match its segments")
    return w.shard, BatchRow(
        w.gateway, w.seq, w.digest, w.received_ns, w.count, w.min_ts, w.max_ts, w.has_q,
        tuple(s for s, *_ in segs),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Published:
    """A PubAck: the stream sequence of the part, and whether it was there already."""

    seq: int
    duplicate: bool


_DOWN = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
)


def overloaded(exc: Exception) -> Overloaded:
    """The :class:`Overloaded` of a JetStream failure (stream full → the longer hint)."""
    if isinstance(exc, nats.js.errors.APIError) and exc.err_code == _STORE_FAILED:
        return Overloaded(f"share log full: {exc.description}", RETRY_FULL_S)
    return Overloaded(f"share log unavailable: {type(exc).__name__} {exc}", RETRY_DOWN_S)


def client_servers(cfg: JetStreamConfig, state_dir: Path) -> tuple[list[str], str | None]:
    """The URLs to dial and the password to send (None when the URLs carry one).

    ``embedded: true`` without ``servers``: the node the party process started on
    this host, at the port it recorded in ``<state_dir>/nats/embedded.port``.
    """
    urls = list(cfg.servers)
    if not urls:
        try:
            port = int((state_dir / "nats" / "embedded.port").read_text())
        except (OSError, ValueError) as exc:
            raise Overloaded("the party's embedded JetStream node has not started yet") from exc
        urls = [f"nats://127.0.0.1:{port}"]
    if any(urlsplit(u).password for u in urls):
        return urls, None
    return urls, credential(state_dir / "nats")


class ShareLog:
    """A connection to the party's JetStream with the share and progress streams."""

    def __init__(self, nc: Client, cfg: JetStreamConfig, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout_s)
        self.cfg = cfg
        self.timeout_s = timeout_s

    @classmethod
    async def connect(
        cls,
        servers: list[str],
        password: str | None,
        cfg: JetStreamConfig,
        name: str,
        wait_s: float = 10.0,
    ) -> ShareLog:
        """Dial the party's JetStream (then reconnecting for ever); Overloaded if not within
        ``wait_s`` (nats-py itself would keep trying the first connect for ever)."""

        async def quiet(exc: Exception) -> None:
            log.debug("jetstream connection: %s %s", type(exc).__name__, exc)

        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=servers,
                    user=USER if password is not None else None,
                    password=password,
                    name=name,
                    connect_timeout=2,
                    reconnect_time_wait=0.25,
                    max_reconnect_attempts=-1,
                    error_cb=quiet,
                ),
                wait_s,
            )
        except (TimeoutError, *_DOWN, OSError) as exc:
            raise overloaded(exc) from exc
        return cls(nc, cfg)

    @classmethod
    async def open(
        cls, cfg: JetStreamConfig, state_dir: Path, name: str, retry_s: float = 0.5
    ) -> ShareLog:
        """Connect and ensure both streams, retrying (logged) until the log answers."""
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                servers, password = client_servers(cfg, state_dir)
                sharelog = await cls.connect(servers, password, cfg, name)
            except Overloaded as exc:
                log.warning("share log not reachable yet (%s); retrying", exc)
                await asyncio.sleep(retry_s)
                continue
            try:
                await sharelog.ensure_streams()
            except Overloaded as exc:
                log.warning("share log streams not ready (%s); retrying", exc)
                await sharelog.close()
                await asyncio.sleep(retry_s)
                continue
            return sharelog

    def shares_config(self) -> StreamConfig:
        """TECC_SHARES at the configured limits."""
        c = self.cfg
        return StreamConfig(
            name=SHARES,
            subjects=["tecc.shares.>"],
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_bytes=c.max_bytes,
            max_age=c.max_age_s,
            max_msg_size=MAX_PART_BYTES,
            duplicate_window=c.duplicate_window_s,
            num_replicas=c.replicas,
        )

    def progress_config(self) -> StreamConfig:
        """TECC_PROGRESS: recent notices only, the oldest dropped first."""
        return StreamConfig(
            name=PROGRESS,
            subjects=["tecc.progress.>"],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=PROGRESS_MAX_AGE_S,
            max_msgs_per_subject=PROGRESS_PER_GATEWAY,
            max_msg_size=4096,
            num_replicas=self.cfg.replicas,
        )

    async def ensure_streams(self, wait_s: float = 30.0) -> None:
        """Create both streams, or update them to this config; retries while no quorum."""
        deadline = asyncio.get_running_loop().time() + wait_s
        for config in (self.shares_config(), self.progress_config()):
            while True:
                check_cancelled()
                try:
                    await self._ensure(config)
                    break
                except (*_DOWN, nats.js.errors.ServiceUnavailableError) as exc:
                    if asyncio.get_running_loop().time() > deadline:
                        raise overloaded(exc) from exc
                    await asyncio.sleep(0.2)

    async def _ensure(self, config: StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:  # exists with other limits: apply ours
            await self.js.update_stream(config)

    async def publish_part(self, row: BatchRow, shard: int) -> Published:
        """Publish one shard part; returns once the stream (all replicas) has it."""
        return await self.publish_encoded(row.gateway, row.seq, shard, encode_part(row, shard))

    async def publish_encoded(self, gateway: str, seq: int, shard: int, data: bytes) -> Published:
        """Publish an encoded part (:func:`encode_part`) of batch ``seq`` of ``gateway``."""
        if len(data) > MAX_PART_BYTES:
            raise ValueError(f"share part of {len(data)} bytes exceeds {MAX_PART_BYTES}")
        return await self._publish(
            shares_subject(shard, gateway), data, {"Nats-Msg-Id": msg_id(gateway, seq, shard)}
        )

    async def publish_progress(self, gateway: str, notice: bytes) -> Published:
        """Publish a verified progress notice as received."""
        return await self._publish(progress_subject(gateway), notice, None)

    async def _publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None
    ) -> Published:
        try:
            ack = await self.js.publish(subject, data, timeout=self.timeout_s, headers=headers)
        except (*_DOWN, nats.js.errors.APIError) as exc:
            raise overloaded(exc) from exc
        return Published(ack.seq, bool(ack.duplicate))

    async def subscribe_progress(self) -> JetStreamContext.PushSubscription:
        """An ordered consumer of every gateway's notices, from the newest of each on
        (recreated by nats-py after :data:`PROGRESS_HEARTBEAT_S` × 2 without activity)."""
        return await self.js.subscribe(
            "tecc.progress.>",
            stream=PROGRESS,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=PROGRESS_HEARTBEAT_S,
        )

    async def stored_part(self, seq: int) -> bytes:
        """The message stored at ``seq`` of TECC_SHARES (a duplicate's original)."""
        try:
            msg = await self.js.get_msg(SHARES, seq)
        except (*_DOWN, nats.js.errors.APIError) as exc:
            raise overloaded(exc) from exc
        return msg.data or b""

    async def close(self) -> None:
        """Flush and close the connection."""
        if not self.nc.is_closed:
            await self.nc.close()
