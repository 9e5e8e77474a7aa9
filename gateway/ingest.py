"""The thread-safe hand-off from sources to the batching loop, with validation.

Sources call :meth:`Ingest.offer` from any thread (paho's network thread, the
asyncio loop); each call validates readings against the sensor's declared
range, counts rejections by (sensor, reason), and appends the accepted ones
together with the source's acknowledgement token under one lock. The batching
loop calls :meth:`Ingest.drain` to take everything in one swap, so the cost per
reading across the thread boundary is one list append.

An acknowledgement token (e.g. an MQTT packet id) is released back to its
source only after every reading offered before it is durably spooled, which is
what makes QoS 1 delivery survive a crash.

Two checks protect the rest of the pipeline from what outside input can do:

* a reading stamped more than ``max_future_skew_s`` after the gateway's clock
  is rejected as ``future_timestamp``. It never reaches the batcher, so it
  can never move the progress the gateway declares (a publisher with a wrong
  clock would otherwise close every window up to its date and make every
  other sensor's readings late);
* rejections are counted per declared sensor; every id that is not declared
  (a topic template or an OPC-UA node yields any string a publisher chooses)
  is counted under the one label :data:`UNDECLARED`, and a small sample of
  such ids is logged at most once per ``log_every_s``. Nothing keyed by
  outside input grows without bound;
* a value inside its declared range whose *scaled* encoding (the sensor's
  :class:`~tecc_contract.scale.Scale`, derived from its ``scale_range``) would
  reach ±2^(``value_bound_bits`` + f) — the bound the clusters' analytics
  policy promises, ``envelope.value_bound_bits`` — is rejected as
  ``beyond_value_bound``: the secure comparisons would wrap it silently (a
  reading of 50000 under limits [10, 90] once raised no alert). With the
  default ``scale_range`` (the declared range) no accepted value comes near it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import le
from typing import Protocol, cast

from gateway.config import SensorConfig
from gateway.sources.payload import PayloadReject, RawReading
from tecc_contract.errors import RejectReason
from tecc_contract.fixedpoint import FixedPoint, SensorRange, classify
from tecc_contract.scale import Scale

log = logging.getLogger(__name__)
Reason = RejectReason | PayloadReject
#: Sensor label of every rejection whose sensor id is not declared (bounded cardinality).
UNDECLARED = "(undeclared)"
#: Sensor label of MQTT messages whose topic matches no rule (or is not UTF-8).
UNMATCHED = "(unmatched)"
_SAMPLE = 8  # undeclared ids remembered between two log lines
_INTERVALS = 1024  # sequences of sensor ids whose intervals offer_columns remembers
_FLOAT_TYPE = {float}
#: What a source needs back to acknowledge one message: (packet id, content digest).
AckToken = tuple[int, int]
_Bounds = tuple[tuple[float, ...], tuple[float, ...]]  # lower and upper ends, per reading


class AckTarget(Protocol):
    """A source that wants tokens back once its readings are durable."""

    name: str

    def ack(self, tokens: list[AckToken]) -> None:
        """Acknowledge ``tokens`` (in the order they were offered)."""


@dataclass(slots=True)
class Drained:
    """Everything taken from the hand-off in one swap."""

    sensors: list[str] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    acks: list[tuple[AckTarget, AckToken]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


class Ingest:
    """Validating, counting, thread-safe buffer between sources and the batcher."""

    def __init__(
        self,
        sensors: Mapping[str, SensorConfig],
        *,
        value_bound_bits: int | None = None,
        max_future_skew_s: float = 5.0,
        log_every_s: float = 60.0,
        now_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # per sensor: an interval certainly accepted (declared range within what its
        # scale holds: the fast path), the declared range and the scale
        self._bits = value_bound_bits
        self._codec = FixedPoint()
        self._ranges = self._accepted_ranges(sensors)
        # offer_columns: the intervals of sensor-id sequences, for the table they came from
        self._intervals: tuple[object, dict[tuple[str, ...], _Bounds]] = (self._ranges, {})
        self._lock = threading.Lock()
        self._buf = Drained()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.accepted: Counter[str] = Counter()  # by source name
        self._skew_ns = int(max_future_skew_s * 1e9)
        self._now_ns = now_ns
        self._monotonic = monotonic
        self._log_every = log_every_s
        self._logged_at: dict[str, float] = {}  # by warning kind (two kinds)
        self._undeclared: dict[str, None] = {}  # ordered sample, at most _SAMPLE ids
        self._undeclared_n = 0
        self._future_n = 0
        self._future_example: tuple[str, int] = ("", 0)

    def _accepted_ranges(
        self, sensors: Mapping[str, SensorConfig]
    ) -> dict[str, tuple[float, float, SensorRange, Scale]]:
        bits = self._bits
        out: dict[str, tuple[float, float, SensorRange, Scale]] = {}
        for s in sensors.values():
            scale = s.scale(bits)
            low, high = scale.inner(bits) if bits is not None else (-math.inf, math.inf)
            out[s.id] = (max(s.range.low, low), min(s.range.high, high), s.range, scale)
        return out

    def set_sensors(self, sensors: Mapping[str, SensorConfig]) -> None:
        """Declare a new set of sensors (a config reload); later offers use it.

        The table is replaced by one reference assignment, so a source thread
        offering at the same moment uses either the old or the new table whole.
        """
        self._ranges = self._accepted_ranges(sensors)

    def _classify(self, value: object, srange: SensorRange, scale: Scale) -> float | Reason:
        """Range check, then the value bound of the scaled value (module docstring)."""
        c = classify(value, srange)
        bits = self._bits
        if isinstance(c, float) and bits is not None and not scale.fits(c, bits, self._codec):
            return PayloadReject.BEYOND_VALUE_BOUND
        return c

    def declared(self, sensor_id: str) -> bool:
        """True if ``sensor_id`` is a declared sensor."""
        return sensor_id in self._ranges

    def _horizon(self) -> int:
        """Timestamps above this are in the future beyond the allowed skew."""
        return self._now_ns() + self._skew_ns

    def _count(self, sensor_id: str, reason: Reason, n: int = 1) -> None:
        """Count ``n`` rejections; caller holds the lock. Undeclared ids share one label."""
        if sensor_id in self._ranges or sensor_id == UNMATCHED:
            self.rejected[(sensor_id, reason.value)] += n
            return
        self.rejected[(UNDECLARED, reason.value)] += n
        self._undeclared_n += n
        if len(self._undeclared) < _SAMPLE:
            self._undeclared[sensor_id[:200]] = None
        if self._due("undeclared"):
            log.warning(
                "%d reading(s) for undeclared sensors since the last report, e.g. %s; "
                "declare them under `sensors` or narrow the source's topic filter / browse "
                "template (counted as gateway_readings_rejected_total{sensor=%r})",
                self._undeclared_n,
                ", ".join(repr(x) for x in self._undeclared),
                UNDECLARED,
            )
            self._undeclared_n = 0
            self._undeclared.clear()

    def _count_future(self, sensor_id: str, ts: int) -> None:
        """Count one reading stamped beyond the skew; caller holds the lock."""
        self._count(sensor_id, PayloadReject.FUTURE_TIMESTAMP)
        self._future_n += 1
        self._future_example = (sensor_id, ts)
        if self._due("future"):
            sensor, stamp = self._future_example
            log.warning(
                "%d reading(s) stamped more than %.1f s in the future since the last report "
                "(e.g. sensor %r at %.3f, gateway clock %.3f) were rejected as "
                "future_timestamp: fix the publisher's clock, or raise "
                "progress.max_future_skew_s if the skew is expected",
                self._future_n,
                self._skew_ns / 1e9,
                sensor[:200],
                stamp / 1e9,
                self._now_ns() / 1e9,
            )
            self._future_n = 0

    def _due(self, kind: str) -> bool:
        now = self._monotonic()
        if now - self._logged_at.get(kind, -self._log_every) >= self._log_every:
            self._logged_at[kind] = now
            return True
        return False

    def offer(
        self,
        source: str,
        sensor_id: str,
        readings: Iterable[RawReading],
        ack: tuple[AckTarget, AckToken] | None = None,
        rejects: Iterable[Reason] = (),
    ) -> int:
        """Validate ``readings`` of one sensor and queue the accepted ones; return that count.

        ``rejects`` are reasons already found by the source (e.g. malformed batch
        items); they are counted under the same lock.
        """
        rng = self._ranges.get(sensor_id)
        ts_ok: list[int] = []
        val_ok: list[float] = []
        bad: list[Reason] = list(rejects)
        future: list[int] = []
        if rng is None:
            bad.extend(RejectReason.UNKNOWN_SENSOR for _ in readings)
        else:
            low, high, srange, scale = rng
            horizon = self._horizon()
            for ts, v in readings:
                if ts > horizon:
                    future.append(ts)
                    continue
                if type(v) is float and low <= v <= high:  # fast path; NaN fails the compare
                    ts_ok.append(ts)
                    val_ok.append(v)
                    continue
                c = self._classify(v, srange, scale)
                if isinstance(c, float):
                    ts_ok.append(ts)
                    val_ok.append(c)
                else:
                    bad.append(c)
        with self._lock:
            if val_ok:
                buf = self._buf
                buf.sensors.extend([sensor_id] * len(val_ok))
                buf.timestamps.extend(ts_ok)
                buf.values.extend(val_ok)
                self.accepted[source] += len(val_ok)
            for reason in bad:
                self._count(sensor_id, reason)
            for ts in future:
                self._count_future(sensor_id, ts)
            if ack is not None:
                self._buf.acks.append(ack)
        return len(val_ok)

    def reject(
        self,
        sensor_id: str,
        reason: Reason,
        ack: tuple[AckTarget, AckToken] | None = None,
        count: int = 1,
    ) -> None:
        """Count ``count`` rejections of ``sensor_id`` for ``reason`` (e.g. a malformed payload)."""
        with self._lock:
            self._count(sensor_id, reason, count)
            if ack is not None:
                self._buf.acks.append(ack)

    def offer_one(
        self,
        source: str,
        sensor_id: str,
        ts: int,
        value: float,
        ack: tuple[AckTarget, AckToken] | None,
    ) -> None:
        """Fast path for one float reading (the common single-value MQTT message)."""
        rng = self._ranges.get(sensor_id)
        if rng is None or not rng[0] <= value <= rng[1] or ts > self._horizon():
            self.offer(source, sensor_id, [(ts, value)], ack)
            return
        with self._lock:
            buf = self._buf
            buf.sensors.append(sensor_id)
            buf.timestamps.append(ts)
            buf.values.append(value)
            if ack is not None:
                buf.acks.append(ack)
            self.accepted[source] += 1

    def offer_rows(
        self,
        source: str,
        rows: Iterable[tuple[str, int, object]],
        rejects: Iterable[tuple[str, Reason]] = (),
    ) -> int:
        """Validate (sensor, timestamp, value) rows of many sensors; queue the accepted ones."""
        sensors: list[str] = []
        ts_ok: list[int] = []
        val_ok: list[float] = []
        bad: list[tuple[str, Reason]] = list(rejects)
        future: list[tuple[str, int]] = []
        ranges = self._ranges
        horizon = self._horizon()
        for sensor_id, ts, v in rows:
            rng = ranges.get(sensor_id)
            if rng is None:
                bad.append((sensor_id, RejectReason.UNKNOWN_SENSOR))
                continue
            if ts > horizon:
                future.append((sensor_id, ts))
                continue
            if type(v) is float and rng[0] <= v <= rng[1]:
                c: float | Reason = v
            else:
                c = self._classify(v, rng[2], rng[3])
            if isinstance(c, float):
                sensors.append(sensor_id)
                ts_ok.append(ts)
                val_ok.append(c)
            else:
                bad.append((sensor_id, c))
        with self._lock:
            buf = self._buf
            buf.sensors.extend(sensors)
            buf.timestamps.extend(ts_ok)
            buf.values.extend(val_ok)
            if val_ok:
                self.accepted[source] += len(val_ok)
            for sensor_id, reason in bad:
                self._count(sensor_id, reason)
            for sensor_id, ts in future:
                self._count_future(sensor_id, ts)
        return len(val_ok)

    def offer_columns(
        self,
        source: str,
        sensors: Sequence[str],
        timestamps: Sequence[int],
        values: Sequence[object],
        rejects: Iterable[tuple[str, Reason]] = (),
        *,
        ack: tuple[AckTarget, AckToken] | None = None,
    ) -> int:
        """Validate parallel columns of readings of many sensors; queue the accepted ones.

        ``ack`` (optional) is queued under the same lock, after the readings. The
        common case — every value a float inside its sensor's accepted interval,
        no timestamp beyond the horizon — is checked with C-level passes over
        the columns (the intervals of a sequence of sensor ids, as a source
        repeats it message after message, are looked up once and remembered),
        then each buffer column is extended once: no per-reading Python step.
        Anything else goes through the per-reading checks of :meth:`_check`.
        """
        horizon = self._horizon()
        n = len(values)
        clean = not n or self._clean(sensors, timestamps, values, horizon)
        bad: list[tuple[str, Reason]] = list(rejects)
        future: list[tuple[str, int]] = []
        ok_s: Sequence[str] = sensors
        ok_t: Sequence[int] = timestamps
        ok_v: Sequence[float] = cast("Sequence[float]", values)  # all floats when clean
        if not clean:
            acc_s: list[str] = []
            acc_t: list[int] = []
            acc_v: list[float] = []
            for sensor_id, ts, v in zip(sensors, timestamps, values, strict=True):
                c = self._check(sensor_id, ts, v, horizon)
                if isinstance(c, float):
                    acc_s.append(sensor_id)
                    acc_t.append(ts)
                    acc_v.append(c)
                elif c is PayloadReject.FUTURE_TIMESTAMP:
                    future.append((sensor_id, ts))
                else:
                    bad.append((sensor_id, c))
            ok_s, ok_t, ok_v, n = acc_s, acc_t, acc_v, len(acc_v)
        with self._lock:
            buf = self._buf
            if n:
                buf.sensors.extend(ok_s)
                buf.timestamps.extend(ok_t)
                buf.values.extend(ok_v)
                self.accepted[source] += n
            for sensor_id, reason in bad:
                self._count(sensor_id, reason)
            for sensor_id, ts in future:
                self._count_future(sensor_id, ts)
            if ack is not None:
                buf.acks.append(ack)
        return n

    def _clean(
        self,
        sensors: Sequence[str],
        timestamps: Sequence[int],
        values: Sequence[object],
        horizon: int,
    ) -> bool:
        """True if every reading is a declared sensor's float within its interval, none future.

        NaN fails the comparisons, a bool or int is not ``float``: both go the
        per-reading way (and are rejected or converted there).
        """
        if len(sensors) != len(values) or len(timestamps) != len(values):
            return False  # the per-reading pass reports the mismatch (zip strict)
        key = tuple(sensors)
        ranges = self._ranges
        owner, known = self._intervals
        if owner is not ranges:  # the sensors were redeclared (a reload): start afresh
            known = {}
            self._intervals = (ranges, known)
        bounds = known.get(key)
        if bounds is None:
            if len(known) >= _INTERVALS:
                known.clear()
            rngs = [ranges.get(s) for s in key]
            if None in rngs:
                return False
            found = cast("list[tuple[float, float, SensorRange, Scale]]", rngs)
            bounds = known[key] = (tuple(r[0] for r in found), tuple(r[1] for r in found))
        if max(timestamps) > horizon or set(map(type, values)) != _FLOAT_TYPE:
            return False
        lows, highs = bounds
        floats = cast("Sequence[float]", values)
        return all(map(le, lows, floats)) and all(map(le, floats, highs))

    def _check(self, sensor_id: str, ts: int, v: object, horizon: int) -> float | Reason:
        """One reading's verdict: the accepted float, or why it is rejected."""
        rng = self._ranges.get(sensor_id)
        if rng is None:
            return RejectReason.UNKNOWN_SENSOR
        if ts > horizon:
            return PayloadReject.FUTURE_TIMESTAMP
        if type(v) is float and rng[0] <= v <= rng[1]:
            return v
        return self._classify(v, rng[2], rng[3])

    def pass_ack(self, ack: tuple[AckTarget, AckToken]) -> None:
        """Queue an ack token that carries no reading (e.g. a recognised redelivery)."""
        with self._lock:
            self._buf.acks.append(ack)

    def drain(self) -> Drained:
        """Take everything queued so far (readings and their ack tokens) in one swap."""
        with self._lock:
            out, self._buf = self._buf, Drained()
        return out

    def pending(self) -> int:
        """Readings queued but not yet drained."""
        return len(self._buf)


def release_acks(acks: list[tuple[AckTarget, AckToken]]) -> None:
    """Give ack tokens back to their sources, grouped per source, order preserved."""
    groups: dict[int, tuple[AckTarget, list[AckToken]]] = {}
    for target, token in acks:
        entry = groups.get(id(target))
        if entry is None:
            groups[id(target)] = (target, [token])
        else:
            entry[1].append(token)
    for target, tokens in groups.values():
        target.ack(tokens)
