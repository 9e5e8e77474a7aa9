"""Topic routing and the validating ingest hand-off (pure, no broker)."""

from __future__ import annotations

import logging
import math

import pytest

from gateway.config import PayloadFormat, SensorConfig, TopicRule
from gateway.ingest import UNDECLARED, AckToken, Ingest, release_acks
from gateway.sources.mqtt import captures, route
from gateway.sources.payload import PayloadReject
from tecc_contract.errors import RejectReason
from tecc_contract.fixedpoint import FixedPoint, SensorRange

SENSORS = {
    "a": SensorConfig("a", SensorRange(0.0, 10.0), ""),
    "b": SensorConfig("b", SensorRange(-1, 1), ""),
}


def test_captures_follow_mqtt_wildcards() -> None:
    """`+` captures one level, `#` the rest; literal levels must match."""
    assert captures("p/+/+/value", "p/l1/temp/value") == ["l1", "temp"]
    assert captures("p/+/value", "p/l1/temp/value") is None
    assert captures("p/#", "p/l1/temp/value") == ["l1/temp/value"]
    assert captures("p/+", "q/x") is None


def test_route_uses_the_first_matching_rule() -> None:
    """Sensor ids come from the template over the captures of the first matching rule."""
    rules = (
        TopicRule("p/+/+/json", "{0}.{1}", PayloadFormat.JSON, ("v",), None),
        TopicRule("p/#", "other.{0}", PayloadFormat.NUMBER, ("value",), None),
    )
    sensor, spec = route(rules, "p/l1/temp/json") or ("", None)
    assert sensor == "l1.temp"
    assert spec is not None
    assert spec.format is PayloadFormat.JSON
    assert route(rules, "p/x") is not None
    assert route(rules, "q/x") is None


class _Target:
    name = "t"

    def __init__(self) -> None:
        self.acked: list[AckToken] = []

    def ack(self, tokens: list[AckToken]) -> None:
        self.acked.extend(tokens)


def test_offer_validates_counts_and_keeps_ack_order() -> None:
    """Accepted readings are queued; each rejection is counted by (sensor, reason)."""
    ing = Ingest(SENSORS)
    target = _Target()
    ing.offer("s", "a", [(1, 5.0), (2, math.nan), (3, 11.0), (4, "x")], (target, (1, 0)))
    ing.offer_one("s", "a", 5, 7.5, (target, (2, 0)))
    ing.offer_one("s", "b", 6, 2.0, (target, (3, 0)))  # out of range -> slow path
    ing.offer_rows(
        "o",
        [("b", 7, 0.5), ("zz", 8, 0.0), ("b", 9, -math.inf)],
        [("a", PayloadReject.MISSING_FIELD)],
    )
    ing.reject("a", PayloadReject.TOO_LARGE, (target, (4, 0)))
    d = ing.drain()
    assert d.values == [5.0, 7.5, 0.5]
    assert d.sensors == ["a", "a", "b"]
    assert d.timestamps == [1, 5, 7]
    assert dict(ing.accepted) == {"s": 2, "o": 1}
    assert ing.rejected == {
        ("a", RejectReason.NAN.value): 1,
        ("a", RejectReason.ABOVE_RANGE.value): 1,
        ("a", RejectReason.NOT_NUMERIC.value): 1,
        ("b", RejectReason.ABOVE_RANGE.value): 1,
        (UNDECLARED, RejectReason.UNKNOWN_SENSOR.value): 1,
        ("b", RejectReason.INFINITE.value): 1,
        ("a", PayloadReject.MISSING_FIELD.value): 1,
        ("a", PayloadReject.TOO_LARGE.value): 1,
    }
    release_acks(d.acks)
    assert [mid for mid, _ in target.acked] == [1, 2, 3, 4]
    assert len(ing.drain()) == 0


NOW = 1_800_000_000 * 10**9
Y2099 = 4_070_908_800 * 10**9


def test_future_timestamps_are_rejected_and_never_queued() -> None:
    """Readings stamped beyond the skew are counted as future_timestamp and not queued.

    Fails on the code before this change: a reading stamped in 2099 was queued
    and moved the declared progress.
    """
    ing = Ingest(SENSORS, max_future_skew_s=5.0, now_ns=lambda: NOW)
    target = _Target()
    ing.offer("s", "a", [(Y2099, 1.0), (NOW + 4 * 10**9, 2.0)], (target, (1, 0)))
    ing.offer_one("s", "a", Y2099, 3.0, (target, (2, 0)))
    ing.offer_rows("o", [("b", NOW + 6 * 10**9, 0.5), ("b", NOW, 0.25)])
    d = ing.drain()
    assert d.values == [2.0, 0.25]
    assert max(d.timestamps) <= NOW + 5 * 10**9
    assert ing.rejected == {
        ("a", PayloadReject.FUTURE_TIMESTAMP.value): 2,
        ("b", PayloadReject.FUTURE_TIMESTAMP.value): 1,
    }
    release_acks(d.acks)
    assert [mid for mid, _ in target.acked] == [1, 2]  # rejected messages are still acked


def test_undeclared_sensor_ids_share_one_label(caplog: pytest.LogCaptureFixture) -> None:
    """10,000 distinct undeclared ids: one counter key, a bounded sample, one log line.

    Fails on the code before this change: every id became its own counter key
    (a permanent metric series).
    """
    clock = [0.0]
    ing = Ingest(SENSORS, monotonic=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        for i in range(10_000):
            ing.offer_one("s", f"site.x{i}", NOW, 1.0, None)
        ing.offer_rows("o", [(f"opcua:ns=2;i={i}", NOW, 1.0) for i in range(5000)])
        clock[0] = 61.0
        ing.reject("site.late", PayloadReject.NOT_NUMERIC)
    assert ing.rejected == {
        (UNDECLARED, RejectReason.UNKNOWN_SENSOR.value): 15_000,
        (UNDECLARED, PayloadReject.NOT_NUMERIC.value): 1,
    }
    lines = [r.getMessage() for r in caplog.records if "undeclared" in r.getMessage()]
    assert len(lines) == 2  # rate-limited: once at the start, once a minute later
    assert "'site.x0'" in lines[0]
    assert "15000 reading(s)" in lines[1]
    assert len(lines[1]) < 1000  # a sample, not the list


def test_a_wide_range_is_accepted_whole_at_12_bits() -> None:
    """Every reading of a 0–100000 sensor is accepted: it is shared scaled, not in its unit.

    Fails on the code before this change: 50000 (and all above 4096) was refused as
    beyond_value_bound, so a declared range wider than ±2^12 lost its readings.
    """
    wide = {"rpm": SensorConfig("rpm", SensorRange(0.0, 100_000.0), "rpm")}
    ing = Ingest(wide, value_bound_bits=12, now_ns=lambda: NOW)
    ing.offer_one("s", "rpm", NOW, 50_000.0, None)
    ing.offer("s", "rpm", [(NOW, 4096.0), (NOW, 100_000.0), (NOW, 0)])
    ing.offer_rows("o", [("rpm", NOW, 99_999.0), ("rpm", NOW, 12)])
    assert ing.drain().values == [50_000.0, 4096.0, 100_000.0, 0.0, 99_999.0, 12.0]
    assert not ing.rejected
    scale = wide["rpm"].scale(12)
    assert all(scale.fits(v, 12, FixedPoint()) for v in (0.0, 100_000.0))


def test_values_beyond_the_ring_bound_are_rejected_not_wrapped() -> None:
    """A reading its scale cannot hold is rejected and counted, at the exact ring edge.

    ``scale_range`` [0, 4000] gives x' = (x − 2000)·2: the ring holds
    round(x'·2^16) < 2^28, i.e. x < 4048 − 2^−18 (half-even rounding), so
    4048 − 2^−17 is accepted and 4048 − 2^−18 rejected, in every offer path.
    """
    narrow = SensorRange(0.0, 4000.0)
    cfg = {"rpm": SensorConfig("rpm", SensorRange(-10_000.0, 100_000.0), "rpm", narrow)}
    ing = Ingest(cfg, value_bound_bits=12, now_ns=lambda: NOW)
    edge_in, edge_out = 4048.0 - 2.0**-17, 4048.0 - 2.0**-18
    ing.offer_one("s", "rpm", NOW, 50_000.0, None)
    ing.offer_one("s", "rpm", NOW, edge_in, None)
    ing.offer("s", "rpm", [(NOW, edge_out), (NOW, 50.0), (NOW, -48.0), (NOW, -47)])
    ing.offer_rows("o", [("rpm", NOW, 99_999.0), ("rpm", NOW, 12)])
    assert ing.drain().values == [edge_in, 50.0, -47.0, 12.0]
    assert ing.rejected == {("rpm", PayloadReject.BEYOND_VALUE_BOUND.value): 4}


def test_offer_columns_equals_offer_rows_on_clean_and_mixed_columns() -> None:
    """The columnar hand-off queues and counts exactly what the row hand-off does.

    Covers the clean fast path (columns appended whole) and the slow path taken
    as soon as one reading is bad: undeclared, NaN, out of range, not a float,
    beyond the value bound, in the future.
    """
    now = 10**18
    cases = [
        [("a", 1, 1.0), ("b", 2, 0.5), ("a", 3, 9.5)],
        [
            ("a", 1, 1.0),
            ("zz", 2, 0.0),
            ("a", 3, math.nan),
            ("b", 4, 2.0),
            ("a", 5, 3),
            ("a", 6, 20.0 * 10**9),
            ("b", now * 2, 0.1),
            ("b", 7, -0.5),
        ],
    ]
    for rows in cases:
        by_rows, by_cols = (Ingest(SENSORS, now_ns=lambda: now) for _ in range(2))
        by_rows.offer_rows("s", rows, [("a", PayloadReject.MISSING_FIELD)])
        n = by_cols.offer_columns(
            "s",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [("a", PayloadReject.MISSING_FIELD)],
        )
        want, got = by_rows.drain(), by_cols.drain()
        assert (got.sensors, got.timestamps, got.values) == (
            want.sensors,
            want.timestamps,
            want.values,
        )
        assert n == len(want.values)
        assert by_cols.rejected == by_rows.rejected
        assert by_cols.accepted == by_rows.accepted
