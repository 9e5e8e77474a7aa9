"""The event-level scorer of ``bench.detect`` (pure): every figure can fail."""

from __future__ import annotations

import pytest

from bench.detect_score import Found, Truth, matches, score

GRACE = 30.0


def _truths() -> list[Truth]:
    return [
        Truth("a", "spike", 100.0, 100.0, True),
        Truth("a", "stuck", 400.0, 440.0, True),
        Truth("b", "level_shift", 200.0, 210.0, True),
        Truth("c", "drift", 300.0, 330.0, False),  # not detectable: not in recall
    ]


def test_overlap_rule_uses_sensor_span_and_grace() -> None:
    """Same sensor, span meets [start, end + grace]; other sensors and later incidents miss."""
    a = Truth("a", "level_shift", 100.0, 110.0, True)
    assert matches(Found("a", "rate", 95.0, 100.0), a, GRACE)
    assert matches(Found("a", "zscore", 139.0, 150.0), a, GRACE)  # the return, in the grace
    assert not matches(Found("a", "zscore", 141.0, 150.0), a, GRACE)
    assert not matches(Found("a", "rate", 80.0, 99.9), a, GRACE)
    assert not matches(Found("b", "rate", 100.0, 105.0), a, GRACE)


def test_recall_precision_false_rate_and_time_to_detect() -> None:
    """Two of three detectable anomalies found; one false incident; undetectable hits count
    as true incidents but not in recall."""
    found = [
        Found("a", "rate", 100.0, 100.0),  # spike, ttd 0
        Found("a", "flatline", 409.0, 445.0),  # stuck, ttd 9
        Found("c", "limit", 320.0, 330.0),  # the undetectable drift: not false
        Found("b", "zscore", 900.0, 905.0),  # false
    ]
    got = score(_truths(), found, hours=0.5, grace_s=GRACE)
    assert got["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert got["precision"] == 0.75
    assert got["false_incidents_per_line_hour"] == 2.0
    assert got["ttd_s_p50"] == 4.5
    assert (got["incidents"], got["anomalies"], got["detectable_anomalies"]) == (4, 4, 3)
    assert got["recall_by_kind"] == {"level_shift": "0/1", "spike": "1/1", "stuck": "1/1"}
    assert got["missed"] == [{"sensor": "b", "kind": "level_shift", "start": 200.0}]


def test_an_incident_that_began_before_the_anomaly_detects_it_at_once() -> None:
    """Time to detect is clamped at 0, and several incidents on one anomaly count once."""
    found = [Found("b", "rate", 190.0, 215.0), Found("b", "zscore", 205.0, 206.0)]
    got = score([Truth("b", "level_shift", 200.0, 210.0, True)], found, hours=1, grace_s=0)
    assert (got["recall"], got["precision"], got["ttd_s_p50"]) == (1.0, 1.0, 0.0)


def test_empty_inputs_and_bad_hours() -> None:
    """No incidents: precision 1, recall 0; nothing detectable: recall 1; hours must be > 0."""
    got = score(_truths(), [], hours=1, grace_s=GRACE)
    assert (got["recall"], got["precision"], got["ttd_s_p50"]) == (0.0, 1.0, None)
    assert score([], [Found("x", "rate", 1, 2)], hours=2, grace_s=0)["recall"] == 1.0
    with pytest.raises(ValueError, match="hours"):
        score([], [], hours=0, grace_s=0)


def test_detectable_follows_the_configured_thresholds() -> None:
    """Detectability is decided from the policy and the sensor's noise, never from flags."""
    import numpy as np  # noqa: PLC0415

    from bench.detect import POLICY  # noqa: PLC0415
    from bench.detect_scenario import detectable, line_config  # noqa: PLC0415
    from cloud_tecc.analytics.policy import load_policy  # noqa: PLC0415
    from firmware_sim.groundtruth import GroundTruthRecord  # noqa: PLC0415

    policy, cfg = load_policy(POLICY), line_config(1, 600, 1_764_230_400.0)
    sensor = "line1.press1.motor_current"  # rate max_delta 10 A, noise 0.5 A

    def rec(kind: str, samples: int = 1, magnitude: float = 0.0) -> GroundTruthRecord:
        return GroundTruthRecord(sensor, kind, 0.0, 1.0, "line1.press1", samples, magnitude)

    one = np.array([50.0])
    assert detectable(rec("spike"), cfg, policy, one, 34.0)[0]  # a 16 A step
    assert not detectable(rec("spike"), cfg, policy, one, 40.0)[0]  # a 10 A step
    assert detectable(rec("spike"), cfg, policy, np.array([120.0]), 40.0) == (True, "limit")
    assert detectable(rec("stuck", samples=200), cfg, policy, np.full(200, 40.0), 40.0)[0]
    assert not detectable(rec("stuck", samples=50), cfg, policy, np.full(50, 40.0), 40.0)[0]
    for kind in ("dropout", "sensor_failure", "garbage"):
        assert detectable(rec(kind), cfg, policy, one, 40.0) == (
            False,
            "no value reaches the analytics",
        )
    assert not detectable(rec("noise_burst", 100, 0.5), cfg, policy, np.zeros(100), 0.0)[0]
    assert detectable(rec("noise_burst", 100, 8.0), cfg, policy, np.zeros(100), 0.0)[0]


def test_grace_is_reported_and_detectors_counted() -> None:
    """An incident on an anomaly's return (inside the grace) is true but counted as
    unmatched without grace; incidents are counted per detector."""
    found = [Found("a", "zscore", 120.0, 121.0), Found("a", "rate", 100.0, 100.0)]
    got = score([Truth("a", "spike", 100.0, 100.0, True)], found, hours=1, grace_s=GRACE)
    assert (got["false_incidents"], got["unmatched_without_grace"]) == (0, 1)
    assert got["incidents_by_detector"] == {"rate": 1, "zscore": 1}
