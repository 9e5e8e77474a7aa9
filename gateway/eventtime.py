"""Per-sensor event time: the bound each sensor puts on the gateway's declared progress.

Pure (no clock of its own, no I/O): the agent feeds every drained reading to
:meth:`EventTime.observe` and asks :meth:`EventTime.through` for the
timestamp below which no declared sensor can still deliver a reading, given
the live floor ``now - progress.slack_s``. The agent then lowers it to the
oldest reading still in the batcher and each uplink to its oldest unsent one,
so the bound is a claim about *spooled* readings.

Three kinds of sensor (``docs/GATEWAY.md``, "Windows, complete ..."):

* unordered (``progress.ordered_sensors: false``): the floor, whatever the
  sensor did;
* ordered (the default): a sensor's next reading is newer than its newest
  one, so its bound is ``max(newest, floor)`` (a silent sensor: the floor);
* backfill (``progress.backfill_sensors``): the sensor replays history. Its
  readings are ordered but far older than the floor, so the floor would make
  every one of them late; its bound is its own newest timestamp, and before
  its first reading 0 (no claim: every epoch waits for it). Windows then
  close on the data's event time, however old. A backfill sensor silent for
  ``backfill_idle_s`` (counted from the start too) is caught up: it falls back
  to the ordered rule, so a finished replay stops holding the gateway's
  progress, and a reading it sends after that older than the declared
  progress is late, as for any sensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class EventTime:
    """Newest timestamp and last-heard time per sensor; see the module docstring."""

    def __init__(
        self,
        sensors: Iterable[str],
        *,
        ordered: bool,
        backfill: Iterable[str] = (),
        backfill_idle_s: float = 30.0,
        started: float = 0.0,
    ) -> None:
        self._sensors = tuple(sensors)
        self._ordered = ordered
        self._backfill = frozenset(backfill)
        self._idle_s = backfill_idle_s
        self._newest: dict[str, int] = {}
        self._heard: dict[str, float] = dict.fromkeys(self._backfill, started)

    def set_sensors(self, sensors: Iterable[str]) -> None:
        """The declared sensors after a config reload (a removed one no longer holds progress)."""
        self._sensors = tuple(sensors)
        self._newest = {s: t for s, t in self._newest.items() if s in self._sensors}

    def observe(self, sensors: Sequence[str], timestamps: Sequence[int], now: float) -> None:
        """Readings drained at monotonic time ``now`` (parallel sequences)."""
        if not self._ordered:
            return
        newest = self._newest
        # The last timestamp of each sensor in the drain (one C-level pass). For an
        # ordered sensor that is its newest; if one arrived out of order the last is
        # older than the newest, which only claims less (never more) progress.
        for sensor, ts in dict(zip(sensors, timestamps, strict=True)).items():
            if ts > newest.get(sensor, 0):
                newest[sensor] = ts
        if self._backfill:
            for sensor in set(sensors) & self._backfill:
                self._heard[sensor] = now

    def backfilling(self, now: float) -> list[str]:
        """Backfill sensors still holding progress at their own event time."""
        return sorted(s for s, t in self._heard.items() if now - t < self._idle_s)

    def through(self, floor_ns: int, now: float) -> int:
        """The smallest per-sensor bound (0 = no claim); ``floor_ns`` = now - slack."""
        if not self._ordered:
            return floor_ns
        holding = set(self.backfilling(now))
        newest = self._newest
        return min(
            (
                newest.get(s, 0) if s in holding else max(newest.get(s, floor_ns), floor_ns)
                for s in self._sensors
            ),
            default=floor_ns,
        )
