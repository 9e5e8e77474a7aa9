"""Ground-truth labels of injected anomalies, as append-only JSON lines.

Each line is one anomaly::

    {"sensor": "line1.press1.bearing_temp", "kind": "spike", "start": 1764230400.1,
     "end": 1764230400.1, "machine": "line1.press1", "samples": 1, "magnitude": 40.0}

``start`` and ``end`` are the simulated timestamps (epoch seconds) stamped on the
first and last affected reading, both inclusive. For a dropout they are the
timestamps the missing readings would have carried. A record is written and
flushed as soon as the anomaly has ended (or when the run stops mid-anomaly).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from firmware_sim.errors import SimError


@dataclass(frozen=True, slots=True)
class GroundTruthRecord:
    """One injected anomaly on one sensor over [start, end] (inclusive)."""

    sensor: str
    kind: str
    start: float
    end: float
    machine: str
    samples: int
    magnitude: float

    def covers(self, sensor: str, ts: float) -> bool:
        """Whether a reading of ``sensor`` at ``ts`` lies inside this anomaly."""
        return sensor == self.sensor and self.start <= ts <= self.end

    def to_json(self) -> str:
        """The record as one compact JSON line (no newline)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> GroundTruthRecord:
        """Parse one JSON line written by :meth:`to_json`."""
        try:
            data = json.loads(line)
            return cls(
                sensor=str(data["sensor"]),
                kind=str(data["kind"]),
                start=float(data["start"]),
                end=float(data["end"]),
                machine=str(data["machine"]),
                samples=int(data["samples"]),
                magnitude=float(data["magnitude"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SimError(f"not a ground-truth record: {line[:80]!r} ({exc})") from exc


class GroundTruthWriter:
    """Appends records to a JSON-lines file, flushing after every record."""

    def __init__(self, path: Path, *, truncate: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.count = 0
        self._fh: IO[str] = path.open("w" if truncate else "a", encoding="utf-8")

    def write(self, record: GroundTruthRecord) -> None:
        """Append and flush one record."""
        self._fh.write(record.to_json() + "\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        """Close the file; further writes fail."""
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GroundTruth:
    """Ground-truth records indexed by sensor, for scoring detectors by (sensor, time)."""

    def __init__(self, records: Iterable[GroundTruthRecord]) -> None:
        self._by_sensor: dict[str, list[GroundTruthRecord]] = {}
        for record in records:
            self._by_sensor.setdefault(record.sensor, []).append(record)
        for items in self._by_sensor.values():
            items.sort(key=lambda r: (r.start, r.end))

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        """Index the records of a ground-truth file."""
        return cls(read_ground_truth(path))

    def sensors(self) -> list[str]:
        """Sensors with at least one anomaly."""
        return sorted(self._by_sensor)

    def records(self, sensor: str) -> list[GroundTruthRecord]:
        """The anomalies of ``sensor`` in start order."""
        return list(self._by_sensor.get(sensor, ()))

    def at(self, sensor: str, ts: float, *, tolerance: float = 0.0) -> list[GroundTruthRecord]:
        """Anomalies of ``sensor`` covering ``ts`` (widened by ``tolerance`` seconds each side).

        Use a tolerance below half the sample period for timestamps that went
        through OPC-UA's microsecond DateTime.
        """
        return self.overlapping(sensor, ts, ts, tolerance=tolerance)

    def overlapping(
        self, sensor: str, start: float, end: float, *, tolerance: float = 0.0
    ) -> list[GroundTruthRecord]:
        """Anomalies of ``sensor`` that intersect the closed window [start, end]."""
        return [
            r
            for r in self._by_sensor.get(sensor, ())
            if r.start - tolerance <= end and start <= r.end + tolerance
        ]


def read_ground_truth(path: Path) -> list[GroundTruthRecord]:
    """All records of a ground-truth file, in the order they were written."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [GroundTruthRecord.from_json(line) for line in lines if line.strip()]
