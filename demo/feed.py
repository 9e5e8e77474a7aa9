"""What feeds the pipeline's gateways: the simulated line, or a CSV replayed as one sensor.

:class:`ReplayFeed` is the second: ``tecc-sim replay`` publishes the file as
one MQTT sensor (``site/<line>/<machine>/<sensor>``, JSON with ``value`` and
``ts``), and the pipeline gives that sensor to one gateway. With recorded
stamps (:attr:`ReplayFeed.backfill`) the gateway declares the sensor in
``progress.backfill_sensors``, so windows close on the data's own event time
(``docs/GATEWAY.md``); with ``rebase`` or ``respace`` the stamps follow the
replay clock and the sensor is a live one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from demo.layout import SimSensor
from firmware_sim.replay import Disorder, Timing

TOPIC_PREFIX = "site"
#: How long a finished (silent) backfill sensor still holds its gateway's progress.
REPLAY_BACKFILL_IDLE_S = 5.0


@dataclass(frozen=True, slots=True)
class ReplayFeed:
    """A CSV file replayed as one MQTT sensor (see the module docstring)."""

    csv: Path
    sensor: SimSensor
    timing: Timing = Timing.RECORDED
    speed: float = 1.0
    respace_s: float | None = None
    on_disorder: Disorder = Disorder.REJECT
    time_column: str | None = None
    value_column: str | None = None

    @property
    def backfill(self) -> bool:
        """Recorded stamps: the gateway must declare progress on the data's event time."""
        return self.timing is Timing.RECORDED

    def backfill_of(self, sensors: Sequence[SimSensor]) -> list[str]:
        """The ids among ``sensors`` a gateway must declare in ``progress.backfill_sensors``."""
        return [s.sensor for s in sensors if self.backfill and s.sensor == self.sensor.sensor]

    @staticmethod
    def mqtt_sensor(sensor_id: str, *, unit: str, low: float, high: float) -> SimSensor:
        """The :class:`SimSensor` ``tecc-sim replay --transport mqtt`` publishes."""
        line, machine, name = sensor_id.split(".")
        return SimSensor(
            sensor=sensor_id,
            machine=f"{line}.{machine}",
            unit=unit,
            low=low,
            high=high,
            transport="mqtt",
            topic=f"{TOPIC_PREFIX}/{line}/{machine}/{name}",
            payload="json",
            qos=1,
        )

    def argv(self, mqtt_port: int) -> tuple[str, ...]:
        """The ``tecc-sim replay`` command line."""
        s = self.sensor
        args = [
            *(sys.executable, "-m", "firmware_sim", "replay", "--csv", str(self.csv)),
            *("--sensor", s.sensor, "--transport", "mqtt", "--payload", "json", "--qos", "1"),
            *("--unit", s.unit, "--range", repr(s.low), repr(s.high)),
            *("--mqtt-port", str(mqtt_port), "--speed", repr(self.speed)),
            *("--on-disorder", self.on_disorder.value),
        ]
        if self.time_column:
            args += ["--time-column", self.time_column]
        if self.value_column:
            args += ["--column", self.value_column]
        if self.timing is Timing.REBASE:
            args.append("--rebase")
        elif self.timing is Timing.RESPACE:
            args += ["--respace", repr(self.respace_s)]
        return tuple(args)
