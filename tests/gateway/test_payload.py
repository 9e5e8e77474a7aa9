"""Pure MQTT payload parsing: formats, rejections, and never raising on bad bytes."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import PayloadFormat
from gateway.sources.payload import PayloadReject, PayloadSpec, parse_payload
from tecc_contract.errors import RejectReason

NOW = 1_764_000_000 * 10**9
NUM = PayloadSpec(PayloadFormat.NUMBER)
JSON = PayloadSpec(PayloadFormat.JSON, ("v",), ("ts",))
BATCH = PayloadSpec(PayloadFormat.JSON_BATCH, ("v",), ("ts",))


def test_number_payload() -> None:
    """A decimal number becomes one reading stamped with the receive time."""
    p = parse_payload(b" 21.25\n", NUM, NOW)
    assert p.readings == [(NOW, 21.25)]
    assert p.rejects == []


def test_number_rejections() -> None:
    """Text, invalid UTF-8 and oversize payloads are rejected with distinct reasons."""
    assert parse_payload(b"hot", NUM, NOW).rejects == [PayloadReject.NOT_NUMERIC]
    assert parse_payload(b"\xff\xfe1", NUM, NOW).rejects == [PayloadReject.INVALID_UTF8]
    assert parse_payload(b"1" * (1 << 20), NUM, NOW).rejects == [PayloadReject.TOO_LARGE]


def test_nan_and_inf_pass_through_for_range_validation() -> None:
    """NaN and Infinity parse; range validation later rejects them by their own reason."""
    ((_, v),) = parse_payload(b"NaN", NUM, NOW).readings
    assert isinstance(v, float)
    assert math.isnan(v)
    ((_, v),) = parse_payload(b'{"v": Infinity}', JSON, NOW).readings
    assert v == math.inf
    ((_, v),) = parse_payload(b"1e999", NUM, NOW).readings
    assert v == math.inf


def test_json_fields_and_timestamps() -> None:
    """Value and timestamp come from the configured paths; bad ones are named."""
    p = parse_payload(b'{"v": 3, "ts": 1764000001.5}', JSON, NOW)
    assert p.readings == [(1_764_000_001_500_000_000, 3)]
    p = parse_payload(b'{"v": 3, "ts": "2025-11-24T16:00:00Z"}', JSON, NOW)
    assert p.readings == [(1_764_000_000 * 10**9, 3)]
    assert parse_payload(b'{"x": 3}', JSON, NOW).rejects == [PayloadReject.MISSING_FIELD]
    assert parse_payload(b'{"v": "3"}', JSON, NOW).rejects == [PayloadReject.NOT_NUMERIC]
    assert parse_payload(b'{"v": true}', JSON, NOW).rejects == [PayloadReject.NOT_NUMERIC]
    assert parse_payload(b'{"v": 1, "ts": 5}', JSON, NOW).rejects == [PayloadReject.BAD_TIMESTAMP]
    assert parse_payload(b"[1]", JSON, NOW).rejects == [PayloadReject.WRONG_SHAPE]
    assert parse_payload(b"{", JSON, NOW).rejects == [PayloadReject.INVALID_JSON]


def test_nested_path() -> None:
    """Dotted paths walk nested objects."""
    spec = PayloadSpec(PayloadFormat.JSON, ("data", "value"))
    assert parse_payload(b'{"data": {"value": 7.5}}', spec, NOW).readings == [(NOW, 7.5)]


def test_batch_mixes_good_and_bad_items() -> None:
    """A batch keeps its good items and counts each bad one."""
    p = parse_payload(b'[1.5, {"v": 2, "ts": 1764000000}, {"w": 1}, "x"]', BATCH, NOW)
    assert p.readings == [(NOW, 1.5), (NOW, 2)]
    assert p.rejects == [PayloadReject.MISSING_FIELD, PayloadReject.WRONG_SHAPE]


def test_huge_integer_literal_is_rejected_not_raised() -> None:
    """An integer literal beyond Python's digit limit is invalid JSON, not a crash."""
    p = parse_payload(b'{"v": ' + b"9" * 5000 + b"}", JSON, NOW)
    assert p.rejects == [PayloadReject.INVALID_JSON]


@given(st.binary(max_size=300), st.sampled_from([NUM, JSON, BATCH]))
def test_never_raises(payload: bytes, spec: PayloadSpec) -> None:
    """Arbitrary bytes give readings or rejections, never an exception."""
    p = parse_payload(payload, spec, NOW)
    assert len(p.readings) + len(p.rejects) >= 1 or spec is BATCH


def test_auto_format_and_failed_sensor_status() -> None:
    """`auto` picks the format per payload; a null value with a status is bad_status."""
    auto = PayloadSpec(PayloadFormat.AUTO, ("value",), ("ts",))
    assert parse_payload(b"63.25", auto, NOW).readings == [(NOW, 63.25)]
    assert parse_payload(b' {"value": 1.5, "ts": 1764230400.5}', auto, NOW).readings == [
        (1_764_230_400_500_000_000, 1.5)
    ]
    batch = parse_payload(b'[{"value": 1, "ts": 1764230400}, {"value": 2}]', auto, NOW)
    assert batch.readings == [(1_764_230_400 * 10**9, 1), (NOW, 2)]
    failed = b'{"value": null, "ts": 1764230400.1, "status": "BadSensorFailure"}'
    assert parse_payload(failed, auto, NOW).rejects == [RejectReason.BAD_STATUS]
    assert parse_payload(b"abc", auto, NOW).rejects == [PayloadReject.NOT_NUMERIC]
