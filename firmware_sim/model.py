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
    """The operating-state timeline of one machine, generated lazily and deterministically.

    Planned operation (:class:`~firmware_sim.config.Operations`) cuts into the
    random timeline: a shift change or maintenance stop is a forced segment
    (idle, or load 0 for a stop) after which the machine runs again. Without
    operations the timeline (and every random draw) is what it always was.
    """

    def __init__(self, spec: MachineSpec, *, seed: int, start: float) -> None:
        self._spec = spec
        self._rng = np.random.default_rng([seed, zlib.crc32(spec.machine_id.encode()), 0])
        first = spec.fixed_state or spec.initial_state
        ops = spec.operations
        self.cold_start = ops.cold_start
        level0 = 0.0 if ops.cold_start else spec.states[first].level
        self._start = start
        self._starts: list[float] = [start]
        self._states: list[MachineState] = [first]
        self._from_level: list[float] = [level0]
        self._targets: list[float] = [spec.states[first].level]
        self._forced_end: list[float | None] = [None]
        windows = [(start + s, start + s + d, 0.0) for s, d in ops.stops]
        self._stops = sorted(windows)

    def _next_forced(self, after: float) -> tuple[float, float, float] | None:
        """The first planned stop or shift break that starts after ``after``."""
        ops, best = self._spec.operations, None
        if ops.shift_s > 0 and ops.shift_break_s > 0:
            k = math.floor((after - self._start) / ops.shift_s) + 1
            s = self._start + k * ops.shift_s
            best = (s, s + ops.shift_break_s, self._spec.states[MachineState.IDLE].level)
        for w in self._stops:
            if w[0] > after and (best is None or w[0] < best[0]):
                best = w
                break
        return best

    def state_at(self, t: float) -> MachineState:
        """The state the machine is in at time ``t`` (clamped to the start)."""
        return self._states[self._index(t)]

    def load_at(self, t: float) -> float:
        """The load in [0, 1] at time ``t``: exponential approach to the segment's level."""
        i = self._index(t)
        target = self._targets[i]
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

    def _append(self, start: float, state: MachineState, target: float, end: float | None) -> None:
        level_at_end = self._level_in(len(self._starts) - 1, start)
        self._starts.append(start)
        self._states.append(state)
        self._from_level.append(level_at_end)
        self._targets.append(target)
        self._forced_end.append(end)

    def _extend(self, t: float) -> None:
        if self._spec.fixed_state is not None:
            return
        while self._starts[-1] <= t:
            forced_end = self._forced_end[-1]
            if forced_end is not None:  # a stop or break ends: the machine runs again
                run = MachineState.RUN
                self._append(forced_end, run, self._spec.states[run].level, None)
                continue
            state = self._states[-1]
            spec = self._spec.states[state]
            dwell = max(spec.min_dwell_s, float(self._rng.exponential(spec.mean_dwell_s)))
            start = self._starts[-1] + dwell
            options = _NEXT[state]
            pick = float(self._rng.random())
            nxt, acc = options[-1][0], 0.0
            for candidate, p in options:
                acc += p
                if pick < acc:
                    nxt = candidate
                    break
            forced = self._next_forced(self._starts[-1])
            if forced is not None and forced[0] < start:
                self._append(forced[0], MachineState.IDLE, forced[2], forced[1])
            else:
                self._append(start, nxt, self._spec.states[nxt].level, None)

    def _level_in(self, i: int, t: float) -> float:
        target = self._targets[i]
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
        # a cold start: switched off, every lag starts from load 0 (a warm-up)
        self._lagged: float | None = 0.0 if schedule.cold_start else None
        self._last_t: float | None = None

    def value(self, t: float) -> float:
        """The clean (anomaly-free) value at simulated time ``t``, inside the range."""
        p = self.spec.signal
        load = self._schedule.load_at(t)
        if self._lagged is None or p.lag_s <= 0:
            self._lagged = load
        elif self._last_t is None:
            pass  # the first reading of a cold start: the lag has not moved yet
        else:
            dt = max(0.0, t - self._last_t)
            self._lagged += (1.0 - math.exp(-dt / p.lag_s)) * (load - self._lagged)
        self._last_t = t
        day = p.daily_period_s
        phase = 2.0 * math.pi * ((t % day) - p.daily_peak_hour * day / 24.0) / day
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
