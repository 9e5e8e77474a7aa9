"""Fuzz MQTT payload mapping: every payload format, then range validation in Ingest.

``parse_payload`` must never raise, whatever a publisher sends, and every
reading it yields must either be queued by :class:`~gateway.ingest.Ingest`
as a finite in-range float or counted as rejected.
"""

from __future__ import annotations

import math

from fuzzing.harness import Target
from gateway.config import PayloadFormat, SensorConfig
from gateway.ingest import Ingest
from gateway.sources.payload import PayloadSpec, parse_payload
from tecc_contract.fixedpoint import SensorRange

_NOW = 1_750_000_000_000_000_000
_SPECS = (
    PayloadSpec(PayloadFormat.NUMBER),
    PayloadSpec(PayloadFormat.JSON, ("value",), ("ts",)),
    PayloadSpec(PayloadFormat.JSON, ("data", "v"), ("data", "t")),
    PayloadSpec(PayloadFormat.JSON_BATCH, ("value",), ("ts",)),
    PayloadSpec(PayloadFormat.AUTO, ("value",), ("ts",), max_bytes=4096),
)
_SEEDS = [
    b"21.5",
    b"-3e2",
    b" 1_000 ",
    b'{"value": 20.25, "ts": 1750000000.5}',
    b'{"value": 7, "ts": "2025-06-15T12:00:00Z"}',
    b'{"value": null, "status": "sensor fault"}',
    b'{"data": {"v": 1.5, "t": 1750000000}}',
    b'[1.0, 2.0, {"value": 3, "ts": 1750000001}, {"value": NaN}, Infinity]',
    b'[{"value": 1e400}, {"value": "12"}, {"value": true}, [], {}]',
    b'{"value": 12345678901234567890123456789}',
    '{"value": 1, "ts": "2025-06-15T12:00:00+02:00", "x": "\u00e9"}'.encode(),
]


def run(data: bytes) -> None:
    """Parse ``data`` with every spec and validate what comes out."""
    for spec in _SPECS:
        ingest = Ingest({"s": SensorConfig("s", SensorRange(-1000.0, 1000.0), "")})
        parsed = parse_payload(data, spec, _NOW)
        for ts, _ in parsed.readings:
            assert isinstance(ts, int)
        queued = ingest.offer("mqtt", "s", parsed.readings, rejects=parsed.rejects)
        drained = ingest.drain()
        assert queued == len(drained.values) <= len(parsed.readings)
        assert all(type(v) is float and math.isfinite(v) for v in drained.values)
        assert all(-1000.0 <= v <= 1000.0 for v in drained.values)
        assert sum(ingest.rejected.values()) == len(parsed.readings) - queued + len(parsed.rejects)


TARGET = Target("mqtt_payload", _SEEDS, run, ())
