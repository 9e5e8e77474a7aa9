"""MQTT payload encodings, including the malformed payloads of the garbage anomaly."""

from __future__ import annotations

import json
import math

from firmware_sim.config import PayloadFormat
from firmware_sim.payloads import GARBAGE_PAYLOADS, decode_plain, encode, encode_batch
from firmware_sim.sample import Sample, Status

GOOD = Sample("l1.m1.t", 3, 1764230400.3, 63.25170001)


def test_plain_and_json_round_trip_exactly() -> None:
    """Plain text and JSON carry the exact float and timestamp."""
    assert decode_plain(encode(GOOD, PayloadFormat.PLAIN)) == GOOD.value
    assert json.loads(encode(GOOD, PayloadFormat.JSON)) == {"value": GOOD.value, "ts": GOOD.ts}
    batch = [GOOD, Sample("l1.m1.t", 4, 1764230400.4, 1.5)]
    assert json.loads(encode_batch(batch)) == [
        {"value": GOOD.value, "ts": GOOD.ts},
        {"value": 1.5, "ts": 1764230400.4},
    ]


def test_failed_sensor_payloads() -> None:
    """A failed sensor sends null with its status in JSON and an empty plain payload."""
    failed = Sample("l1.m1.t", 3, 1.0, 5.0, status=Status.BAD_SENSOR_FAILURE)
    assert encode(failed, PayloadFormat.PLAIN) == b""
    assert json.loads(encode(failed, PayloadFormat.JSON)) == {
        "value": None,
        "ts": 1.0,
        "status": "BadSensorFailure",
    }


def test_garbage_cycles_through_malformed_payloads() -> None:
    """Garbage slots produce every malformed payload and invalid numbers, never a valid reading."""
    seen = set()
    for seq in range(12):
        sample = Sample("l1.m1.t", seq, 1.0, 1e6 if seq % 2 else math.nan, garbage=True)
        payload = encode(sample, PayloadFormat.PLAIN)
        seen.add(payload)
        try:
            value = decode_plain(payload)
        except (ValueError, UnicodeDecodeError):
            continue
        assert not (math.isfinite(value) and 0 <= value <= 150)
    assert set(GARBAGE_PAYLOADS) <= seen
    assert b"\xff\xfe\x80\x81" in seen
