"""The pure signal model: determinism, statistics, ranges and correlations."""

from __future__ import annotations

import itertools
import math

import numpy as np

from firmware_sim.config import MachineState, SimConfig
from firmware_sim.line import simulate
from firmware_sim.model import SensorModel, StateSchedule, build_streams
from tests.sim.simhelpers import START, ConfigFactory

LINE = """
line: l1
seed: {seed}
machines:
  - name: m1
    initial_state: idle
    states:
      idle: {{level: 0.1, mean_dwell_s: 20, min_dwell_s: 10}}
      run: {{level: 0.5, mean_dwell_s: 20, min_dwell_s: 10}}
      load: {{level: 0.9, mean_dwell_s: 20, min_dwell_s: 10}}
    sensors:
      - {{name: temp, kind: temperature, lag_s: 30, daily_amplitude: 0, noise_std: 0}}
      - {{name: current, kind: current, lag_s: 0, noise_std: 0}}
      - {{name: noisy, kind: pressure}}
  - name: m2
    fixed_state: run
    sensors:
      - {{name: p, kind: pressure, offset: 20, load_gain: 100, noise_std: 2.5, lag_s: 0}}
"""


def values(config: SimConfig, sensor: str, seconds: float) -> list[float]:
    """Values of one sensor over ``seconds`` of an anomaly-free run."""
    run = simulate(config, start=START, duration_s=seconds)
    return [s.value for s in run.samples[sensor]]


def test_same_seed_gives_the_same_stream(make_config: ConfigFactory) -> None:
    """Two runs with one seed are identical; another seed differs."""
    a = make_config(LINE.format(seed=7))
    b = make_config(LINE.format(seed=7))
    c = make_config(LINE.format(seed=8))
    assert values(a, "l1.m1.noisy", 60) == values(b, "l1.m1.noisy", 60)
    assert values(a, "l1.m1.noisy", 60) != values(c, "l1.m1.noisy", 60)


def test_a_sensor_stream_does_not_depend_on_other_sensors(make_config: ConfigFactory) -> None:
    """Adding a sensor to the machine leaves the existing sensors' streams unchanged."""
    base = make_config(LINE.format(seed=3))
    more = make_config(
        LINE.format(seed=3).replace(
            "      - {name: noisy", "      - {name: extra, kind: speed}\n      - {name: noisy"
        )
    )
    assert values(base, "l1.m1.noisy", 30) == values(more, "l1.m1.noisy", 30)


def test_mean_and_spread_follow_the_configured_model(make_config: ConfigFactory) -> None:
    """A machine pinned to 'run' (level 0.6): mean = 20 + 100·0.6, std = noise_std."""
    data = np.array(values(make_config(LINE.format(seed=11)), "l1.m2.p", 600))
    assert data.size == 6000
    assert abs(data.mean() - 80.0) < 4 * 2.5 / math.sqrt(data.size)
    assert abs(data.std() - 2.5) < 0.1


def test_values_stay_inside_the_engineering_range(make_config: ConfigFactory) -> None:
    """Clean streams never leave [low, high], even with heavy noise at the edges."""
    config = make_config(
        LINE.format(seed=5).replace(
            "{name: noisy, kind: pressure}",
            "{name: noisy, kind: pressure, range: [0, 100], offset: 5, load_gain: 100, "
            "noise_std: 20}",
        )
    )
    run = simulate(config, start=START, duration_s=300)
    for sensor, samples in run.samples.items():
        spec = config.sensor(sensor)
        assert all(spec.low <= s.value <= spec.high for s in samples), sensor
    noisy = [s.value for s in run.samples["l1.m1.noisy"]]
    assert min(noisy) == 0.0
    assert max(noisy) == 100.0


def test_current_follows_load_and_temperature_lags(make_config: ConfigFactory) -> None:
    """After a state change current settles within seconds; temperature takes minutes."""
    config = make_config(LINE.format(seed=2))
    machine = config.machines[0]
    schedule = StateSchedule(machine, seed=config.seed, start=START)
    segments = schedule.segments_until(START + 600)
    assert len(segments) >= 3
    change = segments[1][0]
    old = machine.states[segments[0][1]].level
    new = machine.states[segments[1][1]].level
    streams = build_streams(config.machines, seed=config.seed, start=START)
    temp_spec, current_spec = config.sensor("l1.m1.temp"), config.sensor("l1.m1.current")
    temp_before = temp_after = current_after = 0.0
    while streams["l1.m1.temp"].next_ts() <= change + 20:
        t = streams["l1.m1.temp"].next()
        c = streams["l1.m1.current"].next()
        if t.ts <= change:
            temp_before = t.value
        temp_after, current_after = t.value, c.value
    current_target = current_spec.signal.offset + current_spec.signal.load_gain * new
    assert abs(current_after - current_target) < 0.05 * abs(
        current_spec.signal.load_gain * (new - old)
    )
    temp_step = temp_spec.signal.load_gain * (new - old)
    moved = (temp_after - temp_before) / temp_step
    assert 0.1 < moved < 0.7


def test_state_machine_follows_allowed_transitions(make_config: ConfigFactory) -> None:
    """idle→run, run→load|idle, load→run, each dwell at least min_dwell_s."""
    config = make_config(LINE.format(seed=9))
    schedule = StateSchedule(config.machines[0], seed=9, start=START)
    segments = schedule.segments_until(START + 3600)
    allowed = {
        (MachineState.IDLE, MachineState.RUN),
        (MachineState.RUN, MachineState.LOAD),
        (MachineState.RUN, MachineState.IDLE),
        (MachineState.LOAD, MachineState.RUN),
    }
    pairs = list(itertools.pairwise(segments))
    assert len(pairs) > 20
    for (t0, s0), (t1, s1) in pairs:
        assert (s0, s1) in allowed
        assert t1 - t0 >= 10.0
    assert {s for _, s in segments} == set(MachineState)


def test_daily_cycle_peaks_at_the_configured_hour(make_config: ConfigFactory) -> None:
    """Amplitude 3 peaking at 15:00 UTC: +3 at 15:00, −3 at 03:00."""
    config = make_config(
        """
        line: l1
        seed: 1
        machines:
          - name: m
            fixed_state: idle
            ramp_s: 0
            sensors:
              - {name: t, kind: temperature, offset: 20, load_gain: 0, daily_amplitude: 3,
                 daily_peak_hour: 15, noise_std: 0}
        """
    )
    machine = config.machines[0]
    model = SensorModel(machine.sensors[0], StateSchedule(machine, seed=1, start=0), seed=1)
    day = 86_400 * 20_000
    assert model.value(day + 3 * 3600) == 17.0
    assert model.value(day + 15 * 3600) == 23.0
    assert abs(model.value(day + 9 * 3600) - 20.0) < 1e-9


OPS_LINE = """
line: l1
seed: 3
machines:
  - name: m
    initial_state: run
    ramp_s: 1
    states:
      idle: {level: 0.1, mean_dwell_s: 30, min_dwell_s: 10}
      run: {level: 0.6, mean_dwell_s: 30, min_dwell_s: 10}
      load: {level: 0.9, mean_dwell_s: 30, min_dwell_s: 10}
    operations:
      cold_start: true
      shift_s: 600
      shift_break_s: 60
      stops: [{start_s: 900, duration_s: 120}]
    sensors:
      - {name: temp, kind: temperature, offset: 20, load_gain: 40, lag_s: 60,
         daily_amplitude: 0, noise_std: 0}
      - {name: current, kind: current, offset: 2, load_gain: 50, lag_s: 0, noise_std: 0}
"""


def test_planned_operation_warm_up_shift_breaks_and_stops(make_config: ConfigFactory) -> None:
    """A cold start warms the temperature up from its offset; every shift_s the machine is
    idle for shift_break_s; a maintenance stop holds load 0 for its duration, then runs."""
    config = make_config(OPS_LINE)
    machine = config.machines[0]
    schedule = StateSchedule(machine, seed=3, start=START)
    assert schedule.load_at(START) == 0.0  # switched off at the start
    for t in (600, 1200):  # shift changes
        assert schedule.state_at(START + t + 30) is MachineState.IDLE
        assert abs(schedule.load_at(START + t + 30) - 0.1) < 1e-6
        assert schedule.state_at(START + t + 61) is MachineState.RUN
    assert abs(schedule.load_at(START + 1000)) < 1e-9  # the stop, at load 0
    assert schedule.state_at(START + 1021) is MachineState.RUN
    streams = build_streams(config.machines, seed=3, start=START)
    temps = [streams["l1.m.temp"].next().value for _ in range(1200)]  # 120 s at 10 Hz
    assert temps[0] == 20.0  # cold
    assert 20.0 < temps[300] < temps[600] < temps[1199]  # warming over the lag
    current = streams["l1.m.current"]
    while current.next_ts() < START + 1000:
        current.next()
    assert current.next().value == 2.0  # stopped: offset only


def test_a_compressed_day(make_config: ConfigFactory) -> None:
    """daily_period_s 3600: the cycle repeats every hour, peaking at 15/24 of it."""
    config = make_config(
        """
        line: l1
        seed: 1
        machines:
          - name: m
            fixed_state: idle
            ramp_s: 0
            sensors:
              - {name: t, kind: temperature, offset: 20, load_gain: 0, daily_amplitude: 3,
                 daily_peak_hour: 15, noise_std: 0, daily_period_s: 3600}
        """
    )
    machine = config.machines[0]
    model = SensorModel(machine.sensors[0], StateSchedule(machine, seed=1, start=0), seed=1)
    assert abs(model.value(3600 * 1000 + 2250) - 23.0) < 1e-9
    assert abs(model.value(3600 * 1001 + 450) - 17.0) < 1e-9
