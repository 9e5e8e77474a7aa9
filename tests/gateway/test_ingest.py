"""Topic routing and the validating ingest hand-off (pure, no broker)."""

from __future__ import annotations

import math

from gateway.config import PayloadFormat, SensorConfig, TopicRule
from gateway.ingest import AckToken, Ingest, release_acks
from gateway.sources.mqtt import captures, route
from gateway.sources.payload import PayloadReject
from tecc_contract.errors import RejectReason
from tecc_contract.fixedpoint import SensorRange

SENSORS = {
    "a": SensorConfig("a", SensorRange(0.0, 10.0)),
    "b": SensorConfig("b", SensorRange(-1, 1)),
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
        TopicRule("p/+/+/json", "{0}.{1}", PayloadFormat.JSON, ("v",)),
        TopicRule("p/#", "other.{0}"),
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
        ("zz", RejectReason.UNKNOWN_SENSOR.value): 1,
        ("b", RejectReason.INFINITE.value): 1,
        ("a", PayloadReject.MISSING_FIELD.value): 1,
        ("a", PayloadReject.TOO_LARGE.value): 1,
    }
    release_acks(d.acks)
    assert [mid for mid, _ in target.acked] == [1, 2, 3, 4]
    assert len(ing.drain()) == 0
