"""The e2e oracle itself (bench/e2e.py:score) on hand-made ground truth, no processes.

A scoring function that cannot see a missed anomaly, a duplicate, a lost
window or a false alert would let every e2e and soak run pass. Here the
"product output" is built by hand: first exactly right, then with one fault
at a time, and each fault must show in its own figure.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bench.e2e import RANGES, Scope, score
from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from demo.pipeline import ROOT
from firmware_sim.groundtruth import GroundTruthRecord
from firmware_sim.line import OfflineRun
from firmware_sim.sample import Sample

SID = "l1.m1.bearing_temp"
T = 1_800_000_000.0
SCOPE = Scope(start=T, t0=T + 2, t_end=T + 9, window_ns=10**9, seen_from=T)
SPIKE_AT = T + 5.0


def _policy() -> AnalyticsPolicy:
    return policy_from_mapping(yaml.safe_load((ROOT / "configs/demo/policy.yaml").read_text()))


def _samples() -> list[Sample]:
    out = []
    for i in range(100):  # 10 s at 10 Hz
        ts = T + i / 10
        value = 90.0 if abs(ts - SPIKE_AT) < 1e-9 else 50.0 + 0.1 * np.sin(i / 3)
        out.append(Sample(SID, i, ts, float(value)))
    return out


def _record(kind: str, start: float, end: float) -> GroundTruthRecord:
    return GroundTruthRecord(SID, kind, start, end, "m1", 1, 40.0)


class _Case:
    """Published readings, ground truth and an exactly right product output."""

    def __init__(self, tmp: Path) -> None:
        RANGES[SID] = (0.0, 150.0)
        self.policy = _policy()
        self.offline = OfflineRun({SID: _samples()}, [])
        smp = self.offline.samples[SID]
        stream = StreamReadings(
            "gw-1",
            SID,
            np.array([round(s.ts * 1e9) for s in smp], dtype=np.int64),
            np.array([s.value for s in smp]),
        )
        ref = run_reference(self.policy, [stream])
        self.windows: list[dict[str, Any]] = [dict(w) for r in ref for w in r.released.windows]
        self.seen = {
            (a["sensor"], int(a["ts_ns"]), a["detector"]): int(a["ts_ns"]) / 1e9 + 0.5
            for r in ref
            for a in r.released.alerts
        }
        self.gt = [_record("spike", SPIKE_AT, SPIKE_AT)]
        self.gt_path = tmp / "gt.jsonl"

    def score(self) -> dict[str, Any]:
        self.gt_path.write_text("".join(g.to_json() + "\n" for g in self.gt))
        return score(
            self.offline,
            self.windows,
            self.seen,
            SCOPE,
            {SID: "gw-1"},
            self.policy,
            self.gt_path,
            {SID: False},
        )


@pytest.fixture
def case(tmp_path: Path) -> _Case:
    return _Case(tmp_path)


def test_exact_output_scores_clean(case: _Case) -> None:
    """Right output: counted == published, one true positive, nothing missed or extra."""
    r = case.score()
    assert r["readings_published"] == 70  # 7 scored windows x 10 readings
    assert r["readings_counted"] == 70
    assert (r["duplicates"], r["mpc_vs_plaintext_mismatches"]) == (0, 0)
    # the spike and the rate alert on its return 0.1 s later (within the 2 s grace)
    assert (r["alerts_true_positive"], r["alerts_false_positive"]) == (2, 0)
    assert (r["anomalies_detectable"], r["anomalies_missed"]) == (1, 0)
    assert r["latency_ms_p99"] == pytest.approx(500.0)


def test_missed_anomaly_is_counted(case: _Case) -> None:
    """An anomaly in the ground truth that raised no alert is a miss, named in details."""
    case.gt.append(_record("drift", T + 7.0, T + 7.5))
    r = case.score()
    assert (r["anomalies_detectable"], r["anomalies_missed"]) == (2, 1)
    assert r["details"]["missed"] == [f"drift:{SID}"]


def test_undetectable_kinds_and_anomalies_before_t0_are_not_misses(case: _Case) -> None:
    """Garbage/dropout/failure are not expected to alert; nor are anomalies before t0."""
    case.gt += [_record("dropout", T + 6, T + 6.5), _record("drift", T + 1.0, T + 1.5)]
    assert case.score()["anomalies_missed"] == 0


def test_duplicate_reading_is_counted(case: _Case) -> None:
    """A window counting one reading more than was published is a duplicate and a mismatch."""
    w = next(w for w in case.windows if int(w["start_ns"]) == round((T + 3) * 1e9))
    w["count"] = int(w["count"]) + 1
    r = case.score()
    assert r["duplicates"] == 1
    assert r["readings_counted"] == r["readings_published"] + 1
    assert r["mpc_vs_plaintext_mismatches"] == 1


def test_late_window_never_released_is_a_loss(case: _Case) -> None:
    """A window the product did not release (late, dropped) shows as missing readings."""
    start = round((T + 4) * 1e9)
    case.windows = [w for w in case.windows if int(w["start_ns"]) != start]
    r = case.score()
    assert r["readings_counted"] == r["readings_published"] - 10
    assert r["details"]["count_diffs"] == {f"{SID}@{start}": (0, 10)}
    assert r["duplicates"] == 0


def test_false_alert_is_a_false_positive_and_a_mismatch(case: _Case) -> None:
    """An alert no anomaly covers (and the reference did not raise) counts twice."""
    ts = round((T + 3.0) * 1e9)
    case.seen[(SID, ts, "limit")] = T + 3.5
    r = case.score()
    assert (r["alerts_true_positive"], r["alerts_false_positive"]) == (2, 1)
    assert r["mpc_vs_plaintext_mismatches"] == 1
    assert {"alert_only_mpc": [SID, ts, "limit"]} in r["details"]["mismatches"]


def test_window_statistic_off_by_more_than_tolerance_is_a_mismatch(case: _Case) -> None:
    """A mean off by 0.01 (over 2^-14 relative at 50) is a mismatch; off by 2^-16 it is not."""
    base = copy.deepcopy(case.windows)
    k = next(i for i, w in enumerate(base) if int(w["start_ns"]) == round((T + 6) * 1e9))
    case.windows[k]["mean"] = float(base[k]["mean"]) + 2**-16
    assert case.score()["mpc_vs_plaintext_mismatches"] == 0
    case.windows[k]["mean"] = float(base[k]["mean"]) + 0.01
    assert case.score()["mpc_vs_plaintext_mismatches"] == 1
