"""One simulated reading as it leaves the model and the scenario."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    """Quality of a reading; maps to OPC-UA status codes and the JSON ``status`` field."""

    GOOD = "Good"
    BAD_SENSOR_FAILURE = "BadSensorFailure"


@dataclass(frozen=True, slots=True)
class Sample:
    """A reading of sensor ``sensor`` stamped with simulated epoch seconds ``ts``.

    ``seq`` counts the sensor's sample slots from 0 (dropped slots included).
    ``garbage`` is true when the value is deliberately invalid (out of range,
    NaN, infinite); the MQTT publisher then sends a malformed payload.
    """

    sensor: str
    seq: int
    ts: float
    value: float
    status: Status = Status.GOOD
    garbage: bool = False
