"""Pure parsing of MQTT payloads into (timestamp, value) pairs.

No I/O, no clock: the caller passes the receive time. A payload either yields
a list of raw ``(timestamp_ns, value)`` pairs (values still unvalidated: range
checks happen later against the sensor's declared range) or a
:class:`PayloadReject` saying why the whole payload is unusable. Nothing here
raises on untrusted input.

Formats (see :class:`~gateway.config.PayloadFormat`):

* ``number`` — the payload is the ASCII decimal text of one number;
* ``json`` — a JSON object; the value (and optionally a timestamp) sit at
  configured dotted field paths;
* ``json_batch`` — a JSON array whose items are numbers or such objects;
* ``auto`` — decided per payload by its first non-blank byte (``[``, ``{``,
  anything else: a number), for topics whose publishers mix formats.

An object whose value is ``null`` and that carries a ``status`` field (a
failed sensor reporting itself) is rejected as ``bad_status``.

Timestamps are Unix seconds (int or float) or RFC 3339 strings; anything
outside 2000-01-01 .. 2100-01-01 is rejected.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from gateway.config import PayloadFormat
from tecc_contract.errors import RejectReason

MAX_PAYLOAD_BYTES: Final = 256 * 1024
_MIN_TS_NS: Final = 946_684_800 * 10**9  # 2000-01-01
_MAX_TS_NS: Final = 4_102_444_800 * 10**9  # 2100-01-01


class PayloadReject(enum.StrEnum):
    """Why a whole payload (or one item of a batch) was refused. Metric label values."""

    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    NOT_NUMERIC = "not_numeric"
    BAD_TIMESTAMP = "bad_timestamp"
    WRONG_SHAPE = "wrong_shape"
    #: stamped further into the future than ``progress.max_future_skew_s`` (a wrong clock)
    FUTURE_TIMESTAMP = "future_timestamp"
    #: scaled |value| >= 2^envelope.value_bound_bits: the secure analytics would wrap it
    BEYOND_VALUE_BOUND = "beyond_value_bound"


@dataclass(frozen=True, slots=True)
class PayloadSpec:
    """What a topic's payloads look like."""

    format: PayloadFormat = PayloadFormat.NUMBER
    value_path: tuple[str, ...] = ("value",)
    timestamp_path: tuple[str, ...] | None = None
    max_bytes: int = MAX_PAYLOAD_BYTES


#: One raw reading: (timestamp in ns since the epoch, value as found in the payload).
RawReading = tuple[int, object]
#: Why one payload or item was refused.
ItemReject = PayloadReject | RejectReason


@dataclass(frozen=True, slots=True)
class Parsed:
    """Outcome of parsing one payload: readings found and per-item rejections."""

    readings: list[RawReading]
    rejects: list[ItemReject]


def _reject(reason: ItemReject) -> Parsed:
    return Parsed([], [reason])


def _constant(name: str) -> float:
    # JSON has no NaN/Infinity; Python's json accepts them. Map to floats so the
    # range validator counts them under their own reasons (nan / infinite).
    return float(name.replace("Infinity", "inf"))


def _timestamp(raw: object) -> int | None:
    """Return ns since the epoch, or None if ``raw`` is not a plausible timestamp."""
    ns: int
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        ns = raw * 1_000_000_000
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        ns = int(raw * 1e9)
    elif isinstance(raw, str) and len(raw) <= 64:
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None
        ns = int(dt.timestamp() * 1e6) * 1000
    else:
        return None
    return ns if _MIN_TS_NS <= ns < _MAX_TS_NS else None


def _field(obj: object, path: tuple[str, ...]) -> tuple[bool, object]:
    cur = obj
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return False, None
        cur = cur[key]
    return True, cur


def _item(item: object, spec: PayloadSpec, now_ns: int) -> RawReading | ItemReject:
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return (now_ns, item)
    if not isinstance(item, dict):
        return PayloadReject.WRONG_SHAPE
    found, value = _field(item, spec.value_path)
    if not found:
        return PayloadReject.MISSING_FIELD
    if value is None and "status" in item:
        return RejectReason.BAD_STATUS
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return PayloadReject.NOT_NUMERIC
    ts = now_ns
    if spec.timestamp_path is not None:
        found, raw_ts = _field(item, spec.timestamp_path)
        if found:
            parsed = _timestamp(raw_ts)
            if parsed is None:
                return PayloadReject.BAD_TIMESTAMP
            ts = parsed
    return (ts, value)


def _number(payload: bytes, now_ns: int) -> Parsed:
    try:
        return Parsed([(now_ns, float(payload))], [])
    except ValueError:
        pass
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return _reject(PayloadReject.INVALID_UTF8)
    return _reject(PayloadReject.NOT_NUMERIC)


def _batch(doc: object, spec: PayloadSpec, now_ns: int) -> Parsed:
    if not isinstance(doc, list):
        return _reject(PayloadReject.WRONG_SHAPE)
    readings: list[RawReading] = []
    rejects: list[ItemReject] = []
    for item in doc:
        r = _item(item, spec, now_ns)
        if isinstance(r, (PayloadReject, RejectReason)):
            rejects.append(r)
        else:
            readings.append(r)
    return Parsed(readings, rejects)


def _format(payload: bytes, fmt: PayloadFormat) -> PayloadFormat:
    if fmt is not PayloadFormat.AUTO:
        return fmt
    head = payload.lstrip()[:1]
    return {b"[": PayloadFormat.JSON_BATCH, b"{": PayloadFormat.JSON}.get(
        head, PayloadFormat.NUMBER
    )


def parse_payload(payload: bytes, spec: PayloadSpec, now_ns: int) -> Parsed:
    """Parse one MQTT payload according to ``spec``; never raises on bad input."""
    if len(payload) > spec.max_bytes:
        return _reject(PayloadReject.TOO_LARGE)
    fmt = _format(payload, spec.format)
    if fmt is PayloadFormat.NUMBER:
        return _number(payload, now_ns)
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_constant)
    except UnicodeDecodeError:
        return _reject(PayloadReject.INVALID_UTF8)
    except (ValueError, RecursionError):
        return _reject(PayloadReject.INVALID_JSON)
    if fmt is PayloadFormat.JSON_BATCH:
        return _batch(doc, spec, now_ns)
    if not isinstance(doc, dict):
        return _reject(PayloadReject.WRONG_SHAPE)
    one = _item(doc, spec, now_ns)
    return _reject(one) if isinstance(one, (PayloadReject, RejectReason)) else Parsed([one], [])
