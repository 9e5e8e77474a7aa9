"""Cut the reading stream into batches by size and age (pure, no clock of its own).

The batcher accumulates drained readings column-wise and, when asked, groups
them per sensor (stable, sorted by timestamp) into
:class:`~tecc_contract.envelope.SensorSegment` values. A batch is due when it
holds ``max_readings`` readings or its oldest reading has waited
``max_delay_s``; the caller passes ``now`` (monotonic seconds).

Acknowledgement tokens travel with the readings: :meth:`Batcher.take` returns
the tokens of every reading in the batch, to be released once the batch is
durably spooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.ingest import AckTarget, AckToken, Drained
from tecc_contract.envelope import SensorSegment


@dataclass(frozen=True, slots=True)
class Batch:
    """A cut batch: segments per sensor and the ack tokens it covers."""

    segments: list[SensorSegment]
    acks: list[tuple[AckTarget, AckToken]]
    count: int


class Batcher:
    """Accumulates readings; cuts batches of at most ``max_readings``."""

    def __init__(self, *, max_readings: int, max_delay_s: float) -> None:
        self.max_readings = max_readings
        self.max_delay_s = max_delay_s
        self._buf = Drained()
        self._since: float | None = None
        self.min_ts: int | None = None  # oldest buffered timestamp

    def __len__(self) -> int:
        return len(self._buf)

    def add(self, drained: Drained, now: float) -> None:
        """Append everything from one drain (readings and ack tokens)."""
        if not drained.values and not drained.acks:
            return
        if self._since is None:
            self._since = now
        buf = self._buf
        if drained.timestamps:
            lo = min(drained.timestamps)
            self.min_ts = lo if self.min_ts is None else min(self.min_ts, lo)
        buf.sensors.extend(drained.sensors)
        buf.timestamps.extend(drained.timestamps)
        buf.values.extend(drained.values)
        buf.acks.extend(drained.acks)

    def due(self, now: float) -> bool:
        """True when a batch should be cut now (size reached or oldest item too old)."""
        if self._since is None:
            return False
        return len(self._buf) >= self.max_readings or now - self._since >= self.max_delay_s

    def take(self, now: float) -> Batch:
        """Cut one batch of at most ``max_readings`` readings (may be empty of readings).

        Ack tokens are released with the batch that holds the last reading
        offered before them; when the buffer is split, tokens stay with the
        remainder, which is conservative (acknowledged later, never early).
        """
        buf = self._buf
        n = min(len(buf), self.max_readings)
        rest = Drained(buf.sensors[n:], buf.timestamps[n:], buf.values[n:])
        if n == len(buf):
            acks, rest.acks = buf.acks, []
        else:
            acks, rest.acks = [], buf.acks
        segments = group(buf.sensors[:n], buf.timestamps[:n], buf.values[:n])
        self._buf = rest
        self.min_ts = min(rest.timestamps) if rest.timestamps else None
        self._since = now if (rest.values or rest.acks) else None
        return Batch(segments, acks, n)


def group(sensors: list[str], timestamps: list[int], values: list[float]) -> list[SensorSegment]:
    """Group parallel columns per sensor (sensor ids sorted), each sorted by timestamp."""
    if not values:
        return []
    ids = {s: i for i, s in enumerate(sorted(set(sensors)))}
    names = list(ids)
    idx = np.fromiter(map(ids.__getitem__, sensors), dtype=np.int64, count=len(sensors))
    ts = np.asarray(timestamps, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float64)
    order = np.lexsort((ts, idx))
    idx, ts, vals = idx[order], ts[order], vals[order]
    cuts = np.flatnonzero(np.diff(idx)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(idx)]))
    return [
        SensorSegment(
            sensor_id=names[int(idx[a])],
            timestamps_ns=ts[a:b].copy(),
            values=vals[a:b].copy(),
        )
        for a, b in zip(starts, ends, strict=True)
    ]
