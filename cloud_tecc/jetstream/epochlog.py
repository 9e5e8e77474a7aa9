"""A shard's committed epochs in the party's JetStream: what a successor resumes from.

Every epoch a shard's lease holder commits is first published here — stream
``TECC_EPOCHS``, subject ``tecc.epochs.<shard>`` — then recorded in the fenced
``tecc_commits`` record (``log_seq`` = this message's sequence), and only then
committed to the worker's own SQLite store. One message carries what the
store's ``commit_epoch`` writes: the epoch's end, its readings, the
secret-shared detector state of every stream it touched and the result
message for the output service (this party's result shares). So a standby whose
store is empty or stale rebuilds the committed state exactly by replaying the
messages up to the record's ``log_seq`` through the same ``commit_epoch`` (a
replay in order reproduces every rewind too: an epoch's commit drops the epochs
at and after its end). Messages after ``log_seq`` are from an owner whose
record write failed (fenced, or it died in between): never applied.

Wire: ``b"\\x01"`` + a msgpack array (:class:`EpochWire`). Like the share log, the
values are shares (uniformly random), inside the party's own JetStream.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
import numpy as np
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from cloud_tecc.analytics.plan import StreamState
from cloud_tecc.config import JetStreamConfig
from cloud_tecc.errors import CloudError
from cloud_tecc.tasks import check_cancelled
from tecc_contract.ring import RingArray
from tecc_contract.scale import Scale

log = logging.getLogger("cloud_tecc.jetstream.epochlog")

EPOCHS: Final = "TECC_EPOCHS"
EPOCH_VERSION: Final = 1
MAX_EPOCH_BYTES: Final = 8 * 1024 * 1024 - 16 * 1024


class EpochLogError(CloudError):
    """An epoch message is malformed or too large."""


class StateWire(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One stream's detector state after the epoch."""

    gateway: str
    sensor: str
    centre: bytes
    hist_x: bytes
    hist_yy: bytes
    scale_exp: int
    scale_off: float


class EpochWire(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One committed epoch of one shard."""

    shard: int
    end_ns: int
    readings: int
    done_ns: int
    fence: int
    states: tuple[StateWire, ...]
    body: bytes | None
    #: The shard map version the epoch was agreed and computed under (``<version>:<digest16>``;
    #: "" in records written before the map was versioned).
    map: str = ""


def subject(shard: int) -> str:
    """The subject of ``shard``'s epochs."""
    return f"tecc.epochs.{shard}"


def _blob(a: RingArray) -> bytes:
    return np.ascontiguousarray(a, dtype="<u8").tobytes()


def _ring(b: bytes) -> RingArray:
    return np.frombuffer(b, dtype="<u8").astype(np.uint64)


def encode_epoch(epoch: EpochWire) -> bytes:
    """The message of one epoch; EpochLogError above the size limit."""
    data = bytes([EPOCH_VERSION]) + msgspec.msgpack.encode(epoch)
    if len(data) > MAX_EPOCH_BYTES:
        raise EpochLogError(
            f"epoch {epoch.end_ns} of shard {epoch.shard}: {len(data)} bytes of stream states "
            f"exceed {MAX_EPOCH_BYTES}; split the shard (raise shards)"
        )
    return data


def decode_epoch(data: bytes) -> EpochWire:
    """Parse an epoch message; EpochLogError if malformed."""
    if not data or data[0] != EPOCH_VERSION:
        raise EpochLogError("epoch message of an unknown format version")
    try:
        return msgspec.msgpack.decode(data[1:], type=EpochWire)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EpochLogError(f"malformed epoch message: {exc}") from exc


def wire_states(states: Mapping[tuple[str, str], StreamState]) -> tuple[StateWire, ...]:
    """States as carried in an epoch message."""
    return tuple(
        StateWire(
            gw,
            se,
            _blob(s.centre),
            _blob(s.hist_x),
            _blob(s.hist_yy),
            s.scale.exponent,
            s.scale.offset,
        )
        for (gw, se), s in sorted(states.items())
    )


def store_states(wire: tuple[StateWire, ...]) -> dict[tuple[str, str], StreamState]:
    """States of an epoch message, as the share store takes them."""
    return {
        (w.gateway, w.sensor): StreamState(
            _ring(w.centre), _ring(w.hist_x), _ring(w.hist_yy), Scale(w.scale_exp, w.scale_off)
        )
        for w in wire
    }


def stream_config(cfg: JetStreamConfig) -> StreamConfig:
    """TECC_EPOCHS: kept ``max_age_s`` (≥ the party's retention), the oldest dropped first."""
    return StreamConfig(
        name=EPOCHS,
        subjects=["tecc.epochs.>"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=cfg.max_age_s,
        max_msg_size=MAX_EPOCH_BYTES,
        num_replicas=cfg.replicas,
    )


async def ensure_stream(js: JetStreamContext, cfg: JetStreamConfig) -> None:
    """Create TECC_EPOCHS, or bring it to this config."""
    config = stream_config(cfg)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


async def publish_epoch(
    js: JetStreamContext, epoch: EpochWire, msg_id: str | None = None, timeout_s: float = 5.0
) -> int:
    """Publish one committed epoch; its stream sequence (once stored, all replicas).

    ``msg_id`` (``Nats-Msg-Id``): a retry of the same epoch whose first attempt
    was stored (its ack lost) is answered with the stored message's sequence.
    """
    headers = {"Nats-Msg-Id": msg_id} if msg_id is not None else None
    ack = await js.publish(
        subject(epoch.shard), encode_epoch(epoch), timeout=timeout_s, headers=headers
    )
    return int(ack.seq)


#: Epochs fetched and applied together while a successor replays (one SQLite transaction).
REPLAY_BATCH: Final = 128
_REPLAY_WAIT_S: Final = 2.0


async def replay(
    js: JetStreamContext,
    shard: int,
    through_seq: int,
    apply: Callable[[list[EpochWire]], Awaitable[None]],
    *,
    after_seq: int = 0,
    applied: Callable[[int], None] | None = None,
) -> int:
    """Apply ``shard``'s epochs with ``after_seq`` < sequence ≤ ``through_seq`` in order, in
    batches; how many.

    Read through an ephemeral pull consumer (``REPLAY_BATCH`` messages a fetch,
    ``apply`` once per batch) rather than one request per message: a
    successor's replay is linear in the committed epochs still in the stream.
    ``applied(seq)`` is told the stream sequence of the last message of each batch
    once ``apply`` returned (a standby following the log resumes after it). Applying
    the messages through ``through_seq`` in order after those through ``after_seq``
    is the same as applying all through ``through_seq`` in order.
    """
    if through_seq <= after_seq:
        return 0
    start = after_seq + 1
    sub = await js.pull_subscribe(
        subject(shard),
        stream=EPOCHS,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            inactive_threshold=30.0,
            max_waiting=1,
        ),
    )
    n, name = 0, ""
    try:
        info = await sub.consumer_info()
        name = info.name
        if info.num_pending == 0:
            return 0
        done = False
        while not done:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                msgs = await sub.fetch(REPLAY_BATCH, timeout=_REPLAY_WAIT_S)
            except nats.errors.TimeoutError:
                break  # nothing more of this shard in the stream
            batch: list[EpochWire] = []
            last = 0
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq > through_seq:  # after the record: an owner whose record write failed
                    done = True
                    break
                last = seq
                try:
                    batch.append(decode_epoch(msg.data or b""))
                except EpochLogError as exc:
                    log.error("shard %d: epoch message %d skipped: %s", shard, seq, exc)
                done = seq == through_seq or msg.metadata.num_pending == 0
            if batch:
                await apply(batch)
                n += len(batch)
            if last and applied is not None:
                applied(last)
    finally:
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await sub.unsubscribe()
            if name:  # unsubscribe leaves an ephemeral consumer to its inactive_threshold
                await js.delete_consumer(EPOCHS, name)
    return n
