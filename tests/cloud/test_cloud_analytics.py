"""Analytics program: plaintext reference vs float maths, secure run vs reference."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.reference import ReferenceAnalytics, StreamReadings, run_reference
from cloud_tecc.analytics.release import build_release, check_layout
from cloud_tecc.errors import AnalyticsError
from tests.cloud.secure_run import secure_results

T0 = 1_700_000_000_000_000_000
POLICY = policy_from_mapping(
    {
        "window_s": 10,
        "min_count": 10,
        "limits": [{"sensor": "t*", "low": 0.0, "high": 80.0}],
        "rates": [{"sensor": "*", "max_delta": 5.0}],
        "zscore": {"window": 50, "k": 3.0, "min_baseline": 20, "min_sigma": 0.01},
        "fleet": {"classes": {"temp": ["t*"]}, "k": 1.2},
    }
)


def _streams(n: int = 300, seed: int = 1) -> list[StreamReadings]:
    rng = np.random.default_rng(seed)
    out = []
    for g, gw in enumerate(("g1", "g2", "g3")):
        ts = T0 + np.arange(n, dtype=np.int64) * (30_000_000_000 // n)
        v = 50.0 + 10.0 * (g == 2) + rng.normal(0.0, 1.0, n)
        v[n // 2] = 90.0
        v[2 * n // 3] = 40.0
        out.append(StreamReadings(gw, "t1", ts, v))
    out.append(StreamReadings("g1", "sparse", T0 + np.arange(3, dtype=np.int64), np.ones(3)))
    return out


def _fixed(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(np.rint(v * 65536) / 65536, dtype=np.float64)


def test_reference_matches_float_statistics_and_detectors() -> None:
    """Window stats and the three detectors agree with straightforward float maths."""
    streams = _streams()
    results = run_reference(POLICY, streams)
    rows = {
        (w["gateway"], w["sensor"], w["start_ns"]): w for r in results for w in r.released.windows
    }
    alerts = {
        (a["gateway"], a["sensor"], a["ts_ns"], a["detector"])
        for r in results
        for a in r.released.alerts
    }
    for s in streams[:3]:
        v = _fixed(s.values)
        for k in range(3):
            w = v[k * 100 : (k + 1) * 100]
            row = rows[(s.gateway, s.sensor, T0 + k * 10_000_000_000)]
            assert row["count"] == 100
            assert row["mean"] == pytest.approx(w.mean(), abs=1e-9)
            assert row["std"] == pytest.approx(w.std(), abs=1e-4)
            assert (row["min"], row["max"]) == (w.min(), w.max())
        for i, t in enumerate(s.timestamps_ns):
            assert ((s.gateway, "t1", int(t), "limit") in alerts) == (not 0 <= v[i] <= 80)
            jump = i > 0 and abs(v[i] - v[i - 1]) > 5.0
            assert ((s.gateway, "t1", int(t), "rate") in alerts) == jump
            base = v[max(0, i - 50) : i]
            if len(base) >= 20:
                dev = (v[i] - base.mean()) ** 2
                bound = 9.0 * (base.var() + 1e-4)
                if abs(dev - bound) > 1e-2 * bound:
                    assert ((s.gateway, "t1", int(t), "zscore") in alerts) == (dev > bound)
    sparse = rows[("g1", "sparse", T0)]
    assert sparse == {"gateway": "g1", "sensor": "sparse", "start_ns": T0, "count": 3}
    dev = {
        (w["gateway"], w["start_ns"]): w["deviates_from_fleet"]
        for w in rows.values()
        if "deviates_from_fleet" in w
    }
    assert dev[("g3", T0)] is True
    assert dev[("g1", T0)] is False


async def _secure(
    policy: AnalyticsPolicy, ref: ReferenceAnalytics, streams: list[StreamReadings]
) -> None:
    results, decoded, _ = await secure_results(policy, streams)
    assert ref.policy is policy
    for r, got in zip(results, decoded, strict=True):
        assert got.windows == r.released.windows
        assert got.fleet == r.released.fleet
        assert sorted(map(str, got.alerts)) == sorted(map(str, r.released.alerts))


async def test_secure_run_equals_reference() -> None:
    """Two MPC parties (in memory) release exactly what the reference releases."""
    await _secure(POLICY, ReferenceAnalytics(POLICY), _streams())


async def test_secure_run_handles_epochs_without_released_windows() -> None:
    """An epoch whose windows all stay below min_count, between full ones, runs and agrees."""
    rng = np.random.default_rng(5)
    streams = []
    for gw in ("g1", "g2"):
        parts = [
            np.arange(k, dtype=np.int64) * 10_000_000 + e * 10_000_000_000
            for e, k in ((0, 97), (1, 4), (2, 13), (3, 1))
        ]
        ts = T0 + np.concatenate(parts)
        streams.append(StreamReadings(gw, "t1", ts, 50.0 + rng.normal(0.0, 1.0, ts.size)))
    results = await ReferenceAnalytics(POLICY).run(streams)
    assert [max(w["count"] for w in r.released.windows) for r in results] == [97, 4, 13, 1]
    assert not results[1].output.plan.minmax_streams.size
    await _secure(POLICY, ReferenceAnalytics(POLICY), streams)


def test_release_withholds_small_windows_and_checks_layouts() -> None:
    """Below min_count only the count is released; a layout beyond policy is refused."""
    results = run_reference(POLICY, _streams(n=60))
    r = results[0]
    rel = build_release(POLICY, r.epoch, r.output, 16)
    sparse = [w for w in rel.layout["windows"] if w["sensor"] == "sparse"]
    assert sparse == [{"gateway": "g1", "sensor": "sparse", "count": 3, "fields": []}]
    check_layout(POLICY, as_layout(rel.layout))
    strict = policy_from_mapping({"min_count": 1000})
    with pytest.raises(AnalyticsError, match="beyond the policy"):
        check_layout(strict, as_layout(rel.layout))
    no_alerts = policy_from_mapping({"release": ["count", "mean"]})
    with pytest.raises(AnalyticsError):
        check_layout(no_alerts, as_layout(rel.layout))
