"""MQTT payload encodings of samples, including deliberately malformed ones.

Formats (:class:`~firmware_sim.config.PayloadFormat`):

- ``plain``: the value as text, ``repr`` precision (``"63.2517"``); a failed
  sensor publishes an empty payload.
- ``json``: ``{"value": 63.2517, "ts": 1764230400.1}``; a failed sensor
  publishes ``{"value": null, "ts": ..., "status": "BadSensorFailure"}``.
- ``json_batch``: a JSON array of ``json`` objects, oldest first.

Floats are written with ``repr`` so a subscriber decodes exactly the value the
model produced. Garbage samples get a malformed payload chosen by slot number
from :data:`GARBAGE_PAYLOADS` (or the out-of-range value itself).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Final

from firmware_sim.config import PayloadFormat
from firmware_sim.sample import Sample, Status

#: Malformed payloads cycled through during a ``garbage`` anomaly (slot 0 of
#: each cycle sends the out-of-range/NaN/inf value in the sensor's format).
GARBAGE_PAYLOADS: Final[tuple[bytes, ...]] = (
    b"abc",
    b"1e309",
    b"9" * 400,
    b"\xff\xfe\x80\x81",
    b'{"value": "abc", "ts": ',
)


def sample_object(sample: Sample) -> dict[str, object]:
    """The JSON object of one sample (``value`` null when the sensor failed)."""
    if sample.status is not Status.GOOD:
        return {"value": None, "ts": sample.ts, "status": sample.status.value}
    return {"value": sample.value, "ts": sample.ts}


def encode(sample: Sample, fmt: PayloadFormat) -> bytes:
    """The payload of a single sample in ``fmt`` (a one-element array for ``json_batch``)."""
    if sample.garbage:
        return garbage_payload(sample, fmt)
    if fmt is PayloadFormat.PLAIN:
        return b"" if sample.status is not Status.GOOD else repr(sample.value).encode()
    if fmt is PayloadFormat.JSON:
        return _dumps(sample_object(sample))
    return encode_batch([sample])


def encode_batch(samples: Sequence[Sample]) -> bytes:
    """A ``json_batch`` payload of well-formed samples."""
    return _dumps([sample_object(s) for s in samples])


def garbage_payload(sample: Sample, fmt: PayloadFormat) -> bytes:
    """The malformed payload for garbage slot ``sample.seq``."""
    cycle = len(GARBAGE_PAYLOADS) + 1
    pick = sample.seq % cycle
    if pick == 0:
        value = sample.value
        if fmt is PayloadFormat.PLAIN:
            return repr(value).encode() if math.isfinite(value) else str(value).encode()
        obj = {"value": value, "ts": sample.ts}
        return json.dumps(obj if fmt is PayloadFormat.JSON else [obj]).encode()
    return GARBAGE_PAYLOADS[pick - 1]


def decode_plain(payload: bytes) -> float:
    """Parse a ``plain`` payload; raises ValueError on malformed text."""
    return float(payload.decode("utf-8"))


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()
