"""The pure signal model: machine operating states and correlated sensor signals.

A machine moves between idle, run and load (:class:`StateSchedule`); each
state has a load level and the load approaches the new level exponentially
(``ramp_s``). A sensor's clean value at simulated time ``t`` is::

    offset + load_gain · lag(load)(t) + daily_amplitude · cos(2π (tod − peak) / 1 day) + noise

where ``lag`` is a first-order low-pass with time constant ``lag_s`` (so motor
current follows load almost at once and bearing temperature lags it by
minutes), ``tod`` is the UTC time of day and ``noise`` is Gaussian with
``noise_std``. The result is clipped to the sensor's engineering range.

Randomness comes from numpy Generators seeded from (seed, machine or sensor id),
so a sensor's stream depends only on the seed, its own config, its machine and
the sample times — not on other sensors or on wall-clock scheduling.
"""

from __future__ import annotations

import bisect
import math
import zlib

import numpy as np

from firmware_sim.config import MachineSpec, MachineState, SensorSpec
from firmware_sim.sample import Sample

DAY_S = 86_400.0

_NEXT: dict[MachineState, tuple[tuple[MachineState, float], ...]] = {
    MachineState.IDLE: ((MachineState.RUN, 1.0),),
    MachineState.RUN: ((MachineState.LOAD, 0.6), (MachineState.IDLE, 0.4)),
    MachineState.LOAD: ((MachineState.RUN, 1.0),),
}


class StateSchedule:
    """The operating-state timeline of one machine, generated lazily and deterministically."""

    def __init__(self, spec: MachineSpec, *, seed: int, start: float) -> None:
        self._spec = spec
        self._rng = np.random.default_rng([seed, zlib.crc32(spec.machine_id.encode()), 0])
        first = spec.fixed_state or spec.initial_state
        level0 = spec.states[first].level
        self._starts: list[float] = [start]
        self._states: list[MachineState] = [first]
        self._from_level: list[float] = [level0]

    def state_at(self, t: float) -> MachineState:
        """The state the machine is in at time ``t`` (clamped to the start)."""
        return self._states[self._index(t)]

    def load_at(self, t: float) -> float:
        """The load in [0, 1] at time ``t``: exponential approach to the state's level."""
        i = self._index(t)
        target = self._spec.states[self._states[i]].level
        ramp = self._spec.ramp_s
        if ramp <= 0:
            return target
        elapsed = max(0.0, t - self._starts[i])
        return target + (self._from_level[i] - target) * math.exp(-elapsed / ramp)

    def segments_until(self, t: float) -> list[tuple[float, MachineState]]:
        """(start time, state) of every segment that begins at or before ``t``."""
        self._extend(t)
        n = bisect.bisect_right(self._starts, t)
        return list(zip(self._starts[:n], self._states[:n], strict=True))

    def _index(self, t: float) -> int:
        self._extend(t)
        return max(0, bisect.bisect_right(self._starts, t) - 1)

    def _extend(self, t: float) -> None:
        if self._spec.fixed_state is not None:
            return
        while self._starts[-1] <= t:
            state = self._states[-1]
            spec = self._spec.states[state]
            dwell = max(spec.min_dwell_s, float(self._rng.exponential(spec.mean_dwell_s)))
            start = self._starts[-1] + dwell
            level_at_end = self._level_in(len(self._starts) - 1, start)
            options = _NEXT[state]
            pick = float(self._rng.random())
            nxt, acc = options[-1][0], 0.0
            for candidate, p in options:
                acc += p
                if pick < acc:
                    nxt = candidate
                    break
            self._starts.append(start)
            self._states.append(nxt)
            self._from_level.append(level_at_end)

    def _level_in(self, i: int, t: float) -> float:
        target = self._spec.states[self._states[i]].level
        ramp = self._spec.ramp_s
        if ramp <= 0:
            return target
        return target + (self._from_level[i] - target) * math.exp(-(t - self._starts[i]) / ramp)


class SensorModel:
    """Clean values of one sensor; call :meth:`value` with non-decreasing times."""

    def __init__(self, spec: SensorSpec, schedule: StateSchedule, *, seed: int) -> None:
        self.spec = spec
        self._schedule = schedule
        self._rng = np.random.default_rng([seed, zlib.crc32(spec.sensor_id.encode()), 1])
        self._lagged: float | None = None
        self._last_t: float | None = None

    def value(self, t: float) -> float:
        """The clean (anomaly-free) value at simulated time ``t``, inside the range."""
        p = self.spec.signal
        load = self._schedule.load_at(t)
        if self._lagged is None or self._last_t is None or p.lag_s <= 0:
            self._lagged = load
        else:
            dt = max(0.0, t - self._last_t)
            self._lagged += (1.0 - math.exp(-dt / p.lag_s)) * (load - self._lagged)
        self._last_t = t
        phase = 2.0 * math.pi * ((t % DAY_S) - p.daily_peak_hour * 3600.0) / DAY_S
        noise = float(self._rng.standard_normal())
        raw = p.offset + p.load_gain * self._lagged + p.daily_amplitude * math.cos(phase)
        raw += p.noise_std * noise
        return min(self.spec.high, max(self.spec.low, raw))


class SensorStream:
    """The clean sample stream of one sensor: slot ``k`` is stamped ``start + k / rate``."""

    def __init__(self, model: SensorModel, *, start: float) -> None:
        self.model = model
        self.start = start
        self.period = 1.0 / model.spec.rate_hz
        self.seq = 0

    def next_ts(self) -> float:
        """Timestamp of the next slot."""
        return self.start + self.seq * self.period

    def next(self) -> Sample:
        """Produce the next clean sample and advance."""
        ts = self.next_ts()
        sample = Sample(self.model.spec.sensor_id, self.seq, ts, self.model.value(ts))
        self.seq += 1
        return sample


def build_streams(
    machines: tuple[MachineSpec, ...], *, seed: int, start: float
) -> dict[str, SensorStream]:
    """Clean streams of every sensor, keyed by sensor id, sharing one schedule per machine."""
    out: dict[str, SensorStream] = {}
    for m in machines:
        schedule = StateSchedule(m, seed=seed, start=start)
        for s in m.sensors:
            out[s.sensor_id] = SensorStream(SensorModel(s, schedule, seed=seed), start=start)
    return out
