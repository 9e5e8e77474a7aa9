"""Known readings for the process tests and the comparison against the reference."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import EpochResult, StreamReadings, run_reference
from tecc_contract.envelope import SensorSegment

from .services import Deployment, TestGateway, http_json, segment

T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
POLICY: dict[str, Any] = {
    "window_s": 10,
    "min_count": 10,
    "limits": [{"sensor": "temp*", "low": 0.0, "high": 80.0}],
    "rates": [{"sensor": "temp*", "max_delta": 6.0}, {"sensor": "press*", "max_delta": 40.0}],
    "zscore": {"window": 60, "k": 3.0, "min_baseline": 20, "min_sigma": 0.01},
    "fleet": {"classes": {"temperature": ["temp*"]}, "k": 1.5},
}
GATEWAYS = ("gw-a", "gw-b", "gw-c", "gw-d")


@dataclass
class Scenario:
    """Per-gateway per-second batches of known readings."""

    streams: list[StreamReadings]
    seconds: int

    def batch(self, gateway: str, second: int) -> list[SensorSegment]:
        """Segments of one gateway for one second of data."""
        segs = []
        for s in self.streams:
            if s.gateway != gateway:
                continue
            m = (s.timestamps_ns >= T0 + second * SECOND) & (
                s.timestamps_ns < T0 + (second + 1) * SECOND
            )
            if m.any():
                segs.append(segment(s.sensor, s.timestamps_ns[m], s.values[m]))
        return segs


def make_scenario(seconds: int = 30, seed: int = 7) -> Scenario:
    """Temperatures (fleet class, one gateway offset by +10), pressures and a sparse sensor."""
    rng = np.random.default_rng(seed)
    streams = []
    for g, gw in enumerate(GATEWAYS):
        ts = T0 + np.arange(seconds * 10, dtype=np.int64) * (SECOND // 10)
        temp = 40.0 + 10.0 * (gw == "gw-d") + rng.normal(0.0, 1.0, ts.size)
        if gw == "gw-a":
            temp[150] = 95.0  # above the limit, a jump and a z-score outlier
            temp[240:] += 3.0  # a level shift: z-score flags, no rate flag
        streams.append(StreamReadings(gw, "temp1", ts, np.round(temp, 3)))
        tp = T0 + np.arange(seconds * 20, dtype=np.int64) * (SECOND // 20) + g * 1000
        press = 1000.0 + np.cumsum(rng.normal(0.0, 2.0, tp.size))
        streams.append(StreamReadings(gw, "press1", tp, press))
        tsp = T0 + np.arange(0, seconds, 2, dtype=np.int64) * SECOND + 123
        streams.append(StreamReadings(gw, "sparse", tsp, rng.uniform(-5, 5, tsp.size)))
    return Scenario(streams, seconds)


def reference(scn: Scenario) -> list[EpochResult]:
    """The plaintext reference over the scenario."""
    return run_reference(policy_from_mapping(POLICY), scn.streams)


def gateways(dep: Deployment) -> dict[str, TestGateway]:
    """One attested test gateway per scenario gateway."""
    return {g: TestGateway(dep, g) for g in GATEWAYS}


def upload_all(
    gws: dict[str, TestGateway], scn: Scenario, seconds: range, *, resend: bool = False
) -> list[str]:
    """Upload every gateway's per-second batch (or resend the identical frames)."""
    statuses = []
    for sec in seconds:
        for g, gw in gws.items():
            frames = gw.frames[sec] if resend else gw.seal(sec, scn.batch(g, sec))
            results = gw.upload(frames)
            assert [r[0] for r in results] == [200] * len(results), results
            statuses += [r[1]["status"] for r in results]
        declare(gws, T0 + (sec + 1) * SECOND)
    return statuses


def declare(gws: dict[str, TestGateway], through_ns: int) -> None:
    """Every gateway tells every party it delivered everything before ``through_ns``."""
    dep = next(iter(gws.values())).dep
    assert set(dep.declare(through_ns, list(gws))) == {200}


def wait_epochs(dep: Deployment, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Poll the output service until ``n`` epochs are stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, epochs = http_json(dep.url("output") + "/api/v1/epochs")
        if len(epochs) >= n:
            return list(epochs)
        time.sleep(0.3)
    raise TimeoutError(f"only {len(epochs)} of {n} epochs reached the output service")


def _margin_map(results: list[EpochResult], kind: str) -> dict[tuple[str, str, int], int]:
    out = {}
    for r in results:
        p = r.output.plan
        m = r.output.margins[kind].view(np.int64)
        if kind in ("zscore", "zscore_band"):
            keys = [(s.gateway, s.sensor, int(t)) for s in r.epoch.streams for t in s.timestamps_ns]
            out.update({k: int(v) for k, v, ok in zip(keys, m, p.zscore_mask, strict=True) if ok})
        else:
            fleet = [i for i in range(len(p.count)) if p.fleet_class[i] >= 0]
            for i, v in zip(fleet, m, strict=True):
                s = r.epoch.streams[i]
                out[(s.gateway, s.sensor, r.epoch.start_ns)] = int(v)
    return out


def compare(dep: Deployment, results: list[EpochResult]) -> dict[str, int]:
    """Assert the output service holds exactly what the reference releases."""
    _, windows = http_json(dep.url("output") + "/api/v1/windows")
    _, alerts = http_json(dep.url("output") + "/api/v1/alerts")
    _, fleet = http_json(dep.url("output") + "/api/v1/fleet")
    want_w = {
        (w["gateway"], w["sensor"], w["start_ns"]): w for r in results for w in r.released.windows
    }
    got_w = {(w["gateway"], w["sensor"], w["start_ns"]): w for w in windows}
    assert set(got_w) == set(want_w)
    zmargin = _margin_map(results, "zscore")
    zband = _margin_map(results, "zscore_band")
    fmargin = _margin_map(results, "fleet")
    fband = _margin_map(results, "fleet_band")  # per stream: |MPC − reference| margin bound
    borderline = sum(abs(v) <= zband[key] for key, v in zmargin.items())
    borderline += sum(abs(v) <= fband[key] for key, v in fmargin.items())
    for key, want in want_w.items():
        got = got_w[key]
        assert got["count"] == want["count"], key
        for f in ("mean", "std", "min", "max"):
            assert got[f] == want.get(f), (key, f)  # exact: same ring sums, same float ops
        if "deviates_from_fleet" in want and abs(fmargin[key]) > fband[key]:
            assert got["deviates_from_fleet"] == want["deviates_from_fleet"], key
    want_a = {
        (a["gateway"], a["sensor"], a["ts_ns"], a["detector"])
        for r in results
        for a in r.released.alerts
    }
    got_a = {(a["gateway"], a["sensor"], a["ts_ns"], a["detector"]) for a in alerts}
    exact = {a for a in want_a ^ got_a if a[3] != "zscore"}
    assert not exact, sorted(exact)[:5]
    z_diff = {a for a in want_a ^ got_a if a[3] == "zscore"}
    assert all(abs(zmargin[a[:3]]) <= zband[a[:3]] for a in z_diff), sorted(z_diff)[:5]
    want_f = {(f["class"], f["start_ns"]): f for r in results for f in r.released.fleet}
    assert {(f["class"], f["start_ns"]): f["count"] for f in fleet} == {
        k: v["count"] for k, v in want_f.items()
    }
    for f in fleet:
        assert f["mean"] == want_f[(f["class"], f["start_ns"])].get("mean")
        assert f["std"] == want_f[(f["class"], f["start_ns"])].get("std")
    return {
        "windows": len(windows),
        "alerts": len(alerts),
        "borderline": borderline,
        "z_differences": len(z_diff),
    }


def check_api(dep: Deployment) -> None:
    """The read API's filters and listings agree with the stored rows."""
    _, health = http_json(dep.url("output") + "/api/v1/health")
    assert health["status"] == "ok"
    assert health["clusters_attested"] == dep.n_parties
    _, sensors = http_json(dep.url("output") + "/api/v1/sensors")
    assert {(s["gateway"], s["sensor"]) for s in sensors} == {
        (g, s) for g in GATEWAYS for s in ("temp1", "press1", "sparse")
    }
    assert all(s["windows"] == 3 for s in sensors)
    since = (T0 + 10 * SECOND) / 1e9
    _, temps = http_json(dep.url("output") + f"/api/v1/windows?sensor=temp1&since={since}")
    assert len(temps) == 2 * len(GATEWAYS)
    assert {w["sensor"] for w in temps} == {"temp1"}
    assert min(w["start_ns"] for w in temps) == T0 + 10 * SECOND
    _, alerts = http_json(dep.url("output") + f"/api/v1/alerts?since={since}")
    assert all(a["ts_ns"] >= T0 + 10 * SECOND for a in alerts)
    status, _ = http_json(dep.url("output") + "/api/v1/alerts?since=yesterday")
    assert status == 400
