"""Anomaly injection: each kind changes exactly the samples its ground truth names."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.config import SimConfig
from firmware_sim.groundtruth import (
    GroundTruth,
    GroundTruthRecord,
    GroundTruthWriter,
    read_ground_truth,
)
from firmware_sim.line import LineSimulator, simulate
from firmware_sim.sample import Sample, Status
from firmware_sim.scenario import AnomalyKind
from tests.sim.simhelpers import START, ConfigFactory

SID = "l1.m1.p"
BASE = """
line: l1
seed: 21
machines:
  - name: m1
    sensors:
      - {name: p, kind: pressure, range: [0, 250]}
scenario:
  anomalies:
"""


def run_with(
    make_config: ConfigFactory, anomaly: str, seconds: float = 30
) -> tuple[SimConfig, list[Sample], list[Sample], list[GroundTruthRecord]]:
    """Clean and anomalous streams of SID plus the ground truth of one anomaly."""
    config = make_config(BASE + f"    - {anomaly}\n")
    clean = simulate(config, start=START, duration_s=seconds, clean=True).samples[SID]
    run = simulate(config, start=START, duration_s=seconds)
    return config, clean, run.samples[SID], run.records


def changed(clean: list[Sample], dirty: list[Sample]) -> list[float]:
    """Timestamps whose published sample differs from the clean one (or is missing)."""
    by_ts = {s.ts: s for s in dirty}
    return [c.ts for c in clean if by_ts.get(c.ts) != c]


@pytest.mark.parametrize(
    ("anomaly", "kind", "samples"),
    [
        ("{kind: spike, sensor: l1.m1.p, start_s: 5.05, magnitude: 30}", "spike", 1),
        (
            "{kind: level_shift, sensor: l1.m1.p, start_s: 5, duration_s: 3, magnitude: 20}",
            "level_shift",
            30,
        ),
        ("{kind: drift, sensor: l1.m1.p, start_s: 5, duration_s: 4, magnitude: 10}", "drift", 40),
        ("{kind: stuck, sensor: l1.m1.p, start_s: 5, duration_s: 2}", "stuck", 20),
        (
            "{kind: noise_burst, sensor: l1.m1.p, start_s: 5, duration_s: 2, magnitude: 5}",
            "noise_burst",
            20,
        ),
        ("{kind: dropout, sensor: l1.m1.p, start_s: 5, duration_s: 1.5}", "dropout", 15),
        (
            "{kind: sensor_failure, sensor: l1.m1.p, start_s: 5, duration_s: 2}",
            "sensor_failure",
            20,
        ),
        ("{kind: garbage, sensor: l1.m1.p, start_s: 5, duration_s: 1}", "garbage", 10),
    ],
)
def test_anomaly_changes_exactly_its_ground_truth_window(
    make_config: ConfigFactory, anomaly: str, kind: str, samples: int
) -> None:
    """The samples that differ from the clean stream are exactly [start, end] of the record."""
    _, clean, dirty, records = run_with(make_config, anomaly)
    assert len(records) == 1
    record = records[0]
    assert (record.sensor, record.kind, record.machine) == (SID, kind, "l1.m1")
    assert record.samples == samples
    diff = changed(clean, dirty)
    assert diff[0] == record.start
    assert diff[-1] == record.end
    assert len(diff) == samples
    assert record.start == pytest.approx(START + 5.1 if kind == "spike" else START + 5, abs=1e-6)


def test_kind_specific_effects(make_config: ConfigFactory) -> None:
    """Spike adds once, shift adds, drift ramps to its magnitude, stuck repeats the last value."""
    _, clean, dirty, rec = run_with(
        make_config, "{kind: drift, sensor: l1.m1.p, start_s: 5, duration_s: 4, magnitude: 10}"
    )
    offsets = [
        d.value - c.value for c, d in zip(clean, dirty, strict=True) if rec[0].covers(SID, c.ts)
    ]
    assert offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx(10.0)
    assert offsets[0] == pytest.approx(10.0 / 40, rel=1e-6)

    _, clean, dirty, rec = run_with(
        make_config, "{kind: stuck, sensor: l1.m1.p, start_s: 5, duration_s: 2}"
    )
    before = [c for c in clean if c.ts < rec[0].start][-1]
    stuck = [d.value for d in dirty if rec[0].covers(SID, d.ts)]
    assert set(stuck) == {before.value}

    _, clean, dirty, rec = run_with(
        make_config,
        "{kind: level_shift, sensor: l1.m1.p, start_s: 5, duration_s: 3, magnitude: 20}",
    )
    shifted = [
        d.value - c.value for c, d in zip(clean, dirty, strict=True) if rec[0].covers(SID, c.ts)
    ]
    assert shifted == pytest.approx([20.0] * 30)


def test_failure_dropout_and_garbage_effects(make_config: ConfigFactory) -> None:
    """Failure sets BadSensorFailure, dropout removes samples, garbage leaves the range."""
    config, _, dirty, rec = run_with(
        make_config, "{kind: sensor_failure, sensor: l1.m1.p, start_s: 5, duration_s: 2}"
    )
    bad = [s for s in dirty if s.status is Status.BAD_SENSOR_FAILURE]
    assert [s.ts for s in bad] == [s.ts for s in dirty if rec[0].covers(SID, s.ts)]
    assert len(bad) == 20

    _, clean, dirty, rec = run_with(
        make_config, "{kind: dropout, sensor: l1.m1.p, start_s: 5, duration_s: 1.5}"
    )
    assert len(clean) - len(dirty) == 15
    assert not [s for s in dirty if rec[0].covers(SID, s.ts)]

    config, _, dirty, rec = run_with(
        make_config, "{kind: garbage, sensor: l1.m1.p, start_s: 5, duration_s: 1}"
    )
    spec = config.sensor(SID)
    garbage = [s for s in dirty if s.garbage]
    assert len(garbage) == 10
    assert all(not (math.isfinite(s.value) and spec.low <= s.value <= spec.high) for s in garbage)
    assert all(spec.low <= s.value <= spec.high for s in dirty if not s.garbage)


def test_non_garbage_anomalies_stay_in_range(make_config: ConfigFactory) -> None:
    """A spike bigger than the range is clipped to the engineering limit."""
    _, _, dirty, rec = run_with(
        make_config, "{kind: spike, sensor: l1.m1.p, start_s: 5, magnitude: 1000}"
    )
    spiked = [s for s in dirty if rec[0].covers(SID, s.ts)]
    assert [s.value for s in spiked] == [250.0]


def test_anomaly_running_at_the_end_is_closed(make_config: ConfigFactory) -> None:
    """An anomaly cut off by the end of the run is recorded up to its last sample."""
    _, _, dirty, records = run_with(
        make_config,
        "{kind: level_shift, sensor: l1.m1.p, start_s: 25, duration_s: 60, magnitude: 5}",
    )
    assert len(records) == 1
    assert records[0].end == dirty[-1].ts
    assert records[0].samples == 50


def test_anomaly_that_never_starts_is_not_recorded(make_config: ConfigFactory) -> None:
    """An anomaly scheduled after the run has no ground-truth record."""
    _, clean, dirty, records = run_with(
        make_config, "{kind: spike, sensor: l1.m1.p, start_s: 100, magnitude: 5}"
    )
    assert records == []
    assert clean == dirty


def test_records_are_emitted_when_the_anomaly_ends(make_config: ConfigFactory) -> None:
    """The record comes out with the first sample after the window, not before."""
    config = make_config(
        BASE + "    - {kind: level_shift, sensor: l1.m1.p, start_s: 1, duration_s: 0.5, "
        "magnitude: 3}\n"
    )
    sim = LineSimulator(config, start=START)
    emitted_at = []
    for _ in range(30):
        step = sim.step(SID)
        if step.records:
            emitted_at.append(step.ts)
    assert emitted_at == [pytest.approx(START + 1.5)]


def test_ground_truth_file_is_flushed_per_record(tmp_path: Path) -> None:
    """Each record is on disk as soon as it is written, and reads back equal."""
    path = tmp_path / "gt" / "truth.jsonl"
    records = [
        GroundTruthRecord(SID, AnomalyKind.SPIKE.value, START + 1, START + 1, "l1.m1", 1, 30.0),
        GroundTruthRecord(SID, AnomalyKind.DROPOUT.value, START + 2, START + 3.5, "l1.m1", 16, 0.0),
    ]
    with GroundTruthWriter(path) as writer:
        writer.write(records[0])
        assert read_ground_truth(path) == records[:1]
        writer.write(records[1])
        assert read_ground_truth(path) == records
    assert records[1].covers(SID, START + 3.5)
    assert not records[1].covers(SID, START + 3.6)
    assert not records[1].covers("l1.m1.q", START + 3)


KINDS = list(AnomalyKind)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3),
    starts=st.lists(st.integers(0, 1800).map(lambda c: c / 100), min_size=3, max_size=3),
    durations=st.lists(st.sampled_from([0.0, 0.1, 0.15, 0.35, 1.0, 4.0]), min_size=3, max_size=3),
)
def test_changed_samples_are_exactly_the_ground_truth(
    make_config: ConfigFactory,
    kinds: list[AnomalyKind],
    starts: list[float],
    durations: list[float],
) -> None:
    """For any anomalies on separate sensors, the changed slots are exactly the recorded windows."""
    sensors = ["a", "b", "c"]
    text = "line: l1\nseed: 3\nmachines:\n  - name: m1\n    sensors:\n"
    text += "".join(f"      - {{name: {s}, kind: pressure}}\n" for s in sensors)
    text += "scenario:\n  anomalies:\n"
    for kind, sensor, start, duration in zip(kinds, sensors, starts, durations, strict=False):
        begin = max(start, 0.1) if kind is AnomalyKind.STUCK else start  # needs a prior reading
        text += (
            f"    - {{kind: {kind.value}, sensor: l1.m1.{sensor}, start_s: {begin!r}, "
            f"duration_s: {duration!r}, magnitude: 7}}\n"
        )
    config = make_config(text)
    clean = simulate(config, start=START, duration_s=20, clean=True)
    run = simulate(config, start=START, duration_s=20)
    truth = GroundTruth(run.records)
    assert len(run.records) == len(kinds)
    for sensor in (f"l1.m1.{s}" for s in sensors):
        diff = changed(clean.samples[sensor], run.samples[sensor])
        labelled = [c.ts for c in clean.samples[sensor] if truth.at(sensor, c.ts)]
        assert diff == labelled, sensor
        for record in truth.records(sensor):
            inside = [c.ts for c in clean.samples[sensor] if record.covers(sensor, c.ts)]
            assert len(inside) == record.samples >= 1


def test_ground_truth_index_answers_point_and_window_queries() -> None:
    """GroundTruth finds the anomalies at a time or overlapping a window, with tolerance."""
    records = [
        GroundTruthRecord(SID, "spike", START + 1, START + 1, "l1.m1", 1, 30.0),
        GroundTruthRecord(SID, "dropout", START + 5, START + 6, "l1.m1", 11, 0.0),
        GroundTruthRecord("l1.m1.q", "stuck", START, START + 9, "l1.m1", 91, 0.0),
    ]
    truth = GroundTruth(reversed(records))
    assert truth.sensors() == ["l1.m1.p", "l1.m1.q"]
    assert [r.kind for r in truth.records(SID)] == ["spike", "dropout"]
    assert [r.kind for r in truth.at(SID, START + 1)] == ["spike"]
    assert truth.at(SID, START + 1.0000004) == []
    assert [r.kind for r in truth.at(SID, START + 1.0000004, tolerance=1e-3)] == ["spike"]
    assert [r.kind for r in truth.overlapping(SID, START + 0.5, START + 5)] == ["spike", "dropout"]
    assert truth.overlapping(SID, START + 2, START + 4.9) == []
    assert truth.at("l1.m1.z", START) == []
