"""Anomaly scenarios: which anomaly hits which sensor when, applied as pure steps.

A scenario is a list of :class:`AnomalySpec` (kind, sensor, start offset from the
run start, duration, magnitude). :class:`SensorInjector` applies one sensor's
anomalies to its clean samples in order and returns the ground-truth record of
each anomaly once it has ended. Given the same clean samples and seed it always
produces the same output.

Window rule: an anomaly with ``duration_s > 0`` affects every sample whose
timestamp ``ts`` satisfies ``run_start + start_s <= ts < run_start + start_s +
duration_s``; with ``duration_s == 0`` it affects exactly one sample, the first
with ``ts >= run_start + start_s``. Every kind except ``garbage`` keeps values
inside the sensor's engineering range (clipped); ``garbage`` leaves it.
"""

from __future__ import annotations

import enum
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from firmware_sim.groundtruth import GroundTruthRecord
from firmware_sim.sample import Sample, Status
from tecc_contract.schema import FileSchema, Finite, Name, NonNegative


class AnomalyKind(enum.StrEnum):
    """The anomaly kinds the simulator can inject."""

    SPIKE = "spike"
    LEVEL_SHIFT = "level_shift"
    DRIFT = "drift"
    STUCK = "stuck"
    NOISE_BURST = "noise_burst"
    DROPOUT = "dropout"
    SENSOR_FAILURE = "sensor_failure"
    GARBAGE = "garbage"


_NEEDS_MAGNITUDE = frozenset(
    {AnomalyKind.SPIKE, AnomalyKind.LEVEL_SHIFT, AnomalyKind.DRIFT, AnomalyKind.NOISE_BURST}
)


class AnomalySpec(FileSchema, frozen=True, kw_only=True):
    """One anomaly: ``kind`` on ``sensor`` from ``start_s`` after the run start.

    ``magnitude`` is the added offset (spike, level shift), the final offset of
    a linear drift, or the standard deviation of extra noise (noise burst).

    Rules: ``spike``, ``level_shift``, ``drift`` and ``noise_burst`` need a non-zero
    ``magnitude``.
    """

    kind: AnomalyKind
    sensor: Name
    start_s: NonNegative
    duration_s: NonNegative = 0.0
    magnitude: Finite = 0.0

    def __post_init__(self) -> None:
        if self.kind in _NEEDS_MAGNITUDE and self.magnitude == 0:
            raise ValueError(f"{self.kind} anomaly on {self.sensor} needs a non-zero magnitude")


def garbage_value(index: int, low: float, high: float) -> float:
    """The ``index``-th deliberately invalid value for a sensor with range [low, high]."""
    span = high - low
    values = (high + 10 * span, math.nan, low - 10 * span, math.inf, 1e300, -math.inf)
    return values[index % len(values)]


def sensor_seed(seed: int, sensor_id: str, stream: int) -> list[int]:
    """Seed material for a sensor's independent random stream number ``stream``."""
    return [seed, zlib.crc32(sensor_id.encode()), stream]


@dataclass(slots=True)
class _Window:
    spec: AnomalySpec
    start: float
    end: float | None  # exclusive; None = single sample
    rng: np.random.Generator
    first_ts: float | None = None
    last_ts: float = 0.0
    count: int = 0
    held: float = 0.0
    done: bool = False

    def active(self, ts: float) -> bool:
        if self.done or ts < self.start:
            return False
        if self.end is None:
            return self.count == 0
        return ts < self.end


class SensorInjector:
    """Applies one sensor's anomalies to its samples, in timestamp order."""

    def __init__(
        self,
        anomalies: Sequence[AnomalySpec],
        *,
        run_start: float,
        period: float,
        low: float,
        high: float,
        machine: str,
        seed: int,
    ) -> None:
        self._period = period
        self._low = low
        self._high = high
        self._machine = machine
        self._last_value: float | None = None
        self._windows = [
            _Window(
                spec=a,
                start=run_start + a.start_s,
                end=run_start + a.start_s + a.duration_s if a.duration_s > 0 else None,
                rng=np.random.default_rng([*sensor_seed(seed, a.sensor, 7), i]),
            )
            for i, a in enumerate(anomalies)
        ]

    def apply(self, clean: Sample) -> tuple[Sample | None, list[GroundTruthRecord]]:
        """The published form of ``clean`` (None = dropped) and newly ended anomalies."""
        finished: list[GroundTruthRecord] = []
        out: Sample | None = clean
        for w in self._windows:
            if not w.active(clean.ts):
                if w.count and not w.done:
                    finished.append(self._close(w))
                continue
            if w.count == 0:
                w.first_ts = clean.ts
                w.held = self._last_value if self._last_value is not None else clean.value
            w.count += 1
            w.last_ts = clean.ts
            out = None if out is None else self._effect(w, out)
        if out is not None and out.status is Status.GOOD and not out.garbage:
            self._last_value = out.value
        return out, finished

    def finish(self) -> list[GroundTruthRecord]:
        """Records of anomalies still running when the stream stops (end = last affected)."""
        return [self._close(w) for w in self._windows if w.count and not w.done]

    def _close(self, w: _Window) -> GroundTruthRecord:
        w.done = True
        assert w.first_ts is not None
        return GroundTruthRecord(
            sensor=w.spec.sensor,
            kind=w.spec.kind.value,
            start=w.first_ts,
            end=w.last_ts,
            machine=self._machine,
            samples=w.count,
            magnitude=w.spec.magnitude,
        )

    def _effect(self, w: _Window, s: Sample) -> Sample | None:
        spec = w.spec
        match spec.kind:
            case AnomalyKind.DROPOUT:
                return None
            case AnomalyKind.GARBAGE:
                value = garbage_value(w.count - 1, self._low, self._high)
                return replace(s, value=value, garbage=True)
            case AnomalyKind.SENSOR_FAILURE:
                return replace(s, value=w.held, status=Status.BAD_SENSOR_FAILURE)
            case AnomalyKind.STUCK:
                value = w.held
            case AnomalyKind.SPIKE | AnomalyKind.LEVEL_SHIFT:
                value = s.value + spec.magnitude
            case AnomalyKind.DRIFT:
                assert w.first_ts is not None
                span = max(spec.duration_s, self._period)
                frac = min(1.0, (s.ts - w.first_ts + self._period) / span)
                value = s.value + spec.magnitude * frac
            case AnomalyKind.NOISE_BURST:
                value = s.value + spec.magnitude * float(w.rng.standard_normal())
        if s.garbage:
            return replace(s, value=value)
        return replace(s, value=min(self._high, max(self._low, value)))
