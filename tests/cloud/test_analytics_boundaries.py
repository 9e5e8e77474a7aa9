"""Boundaries of the release rules: exactly ``min_count`` and one short, variance floor, fleet std.

Each test names the deliberate bug (mutant) it kills.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.analytics.release import build_release, check_layout
from cloud_tecc.errors import AnalyticsError
from tests.cloud.secure_run import secure_results

T0 = 1_700_000_000_000_000_000
S = 10_000_000_000
MIN = 10


def _policy(**extra: Any) -> AnalyticsPolicy:
    return policy_from_mapping(
        {
            "window_s": 10,
            "min_count": MIN,
            "limits": [{"sensor": "*", "low": 0.0, "high": 80.0}],
            "zscore": {"window": 50, "k": 3.0, "min_sigma": 0.01, "min_baseline": 5},
            "fleet": {"classes": {"temperature": ["*.temp"], "pressure": ["*.press"]}},
        }
        | extra
    )


def _stream(gw: str, sensor: str, values: Any, epoch: int = 0) -> StreamReadings:
    v = np.asarray(values, dtype=np.float64)
    ts = T0 + epoch * S + np.arange(v.size, dtype=np.int64) * (S // (v.size + 1))
    return StreamReadings(gw, sensor, ts, v)


def _fixed(v: Any) -> Any:
    return np.rint(np.asarray(v, dtype=np.float64) * 65536) / 65536


async def test_windows_and_fleet_classes_at_exactly_min_count_and_one_short() -> None:
    """A window/class of exactly min_count releases its statistics, flags and fleet sums;
    min_count − 1 releases only its count.

    Kills ``n >= min_count`` → ``n > min_count`` and → ``n >= min_count - 1`` in
    ``build_release``, and removing the fleet-class ``min_count`` check of ``_fleet_release``.
    """
    rng = np.random.default_rng(4)
    at = 50.0 + rng.normal(0.0, 1.0, MIN)
    at[-1] = 95.0  # above the limit: the flag must be released
    short = 50.0 + rng.normal(0.0, 1.0, MIN - 1)
    short[-1] = 95.0
    streams = [
        _stream("g1", "m.temp", at),
        _stream("g2", "m.press", short),
        _stream("g3", "m.press", short),
    ]
    policy = _policy()
    results, decoded, _ = await secure_results(policy, streams)
    (rel,) = decoded
    assert rel.windows == results[0].released.windows
    win = {w["gateway"]: w for w in rel.windows}
    assert win["g1"]["count"] == MIN
    assert win["g1"]["mean"] == pytest.approx(_fixed(at).mean(), abs=1e-9)
    assert win["g1"]["std"] == pytest.approx(_fixed(at).std(), abs=1e-4)
    assert (win["g1"]["min"], win["g1"]["max"]) == (_fixed(at).min(), 95.0)
    assert win["g1"]["deviates_from_fleet"] is False
    for gw in ("g2", "g3"):
        assert win[gw] == {"gateway": gw, "sensor": "m.press", "start_ns": T0, "count": MIN - 1}
    limit = [a for a in rel.alerts if a["detector"] == "limit"]
    last = int(streams[0].timestamps_ns[-1])
    want = {"gateway": "g1", "sensor": "m.temp", "ts_ns": last, "detector": "limit"}
    assert limit == [want | {"index": MIN - 1}]  # the last of the window's MIN readings
    fleet = {f["class"]: f for f in rel.fleet}
    assert fleet["temperature"]["count"] == MIN
    assert fleet["temperature"]["mean"] == pytest.approx(_fixed(at).mean(), abs=1e-9)
    assert fleet["pressure"] == {"class": "pressure", "start_ns": T0, "count": 0}
    r = results[0]
    layout = build_release(policy, r.epoch, r.output, 16).layout
    assert {f["class"]: f["fields"] for f in layout["fleet"]} == {
        "pressure": [],
        "temperature": ["sum", "sumsq"],
    }
    assert [w["fields"] for w in layout["windows"]] == [["sum", "sumsq", "min", "max"], [], []]
    assert {(d["gateway"], d["class"]) for d in layout["fleet_dev"]} == {("g1", "temperature")}


def test_output_check_refuses_releases_one_reading_short() -> None:
    """The output's layout check refuses statistics, alerts and fleet sums below min_count.

    Kills removing the window and the fleet-class ``min_count`` checks of ``check_layout``.
    """
    policy = _policy()
    streams = [_stream("g1", "m.temp", np.full(MIN, 50.0)), _stream("g2", "m.press", [50.0])]
    r = run_reference(policy, streams)[0]
    layout = build_release(policy, r.epoch, r.output, 16).layout
    check_layout(policy, as_layout(layout))
    windows = [dict(w) for w in layout["windows"]]
    windows[0]["count"] = MIN - 1
    with pytest.raises(AnalyticsError, match="beyond the policy"):
        check_layout(policy, as_layout(dict(layout, windows=windows)))
    # A class whose windows are all withheld: its entry carries fields but count 0.
    fleet = [
        dict(f, fields=["sum", "sumsq"]) if f["class"] == "pressure" else f for f in layout["fleet"]
    ]
    assert any(f["class"] == "pressure" and f["count"] == 0 for f in fleet)
    with pytest.raises(AnalyticsError, match="too few readings"):
        check_layout(policy, as_layout(dict(layout, fleet=fleet)))
    alerts = [{"gateway": "g2", "sensor": "m.press", "detector": "limit", "first": 0, "n": 1}]
    with pytest.raises(AnalyticsError, match="below min_count"):
        check_layout(policy, as_layout(dict(layout, alerts=alerts)))
    dev = [{"gateway": "g2", "sensor": "m.press", "class": "pressure"}]
    with pytest.raises(AnalyticsError, match="fleet deviation"):
        check_layout(policy, as_layout(dict(layout, fleet_dev=dev)))


async def test_constant_stream_does_not_fire_the_zscore_below_the_variance_floor() -> None:
    """A constant stream (σ = 0) with a step smaller than k·min_sigma raises no z-score flag;
    a step above it does. Kills dropping the ``min_sigma`` floor from the z-score."""
    policy = _policy()
    v = np.full(40, 50.0)
    v[30] = 50.0 + 0.02  # 0.02 < k·min_sigma = 0.03
    v[35] = 50.0 + 0.5  # far above
    streams = [_stream("g1", "m.temp", v)]
    results, decoded, _ = await secure_results(policy, streams)
    z = [a["ts_ns"] for a in decoded[0].alerts if a["detector"] == "zscore"]
    assert z == [int(streams[0].timestamps_ns[35])]
    ref = [a["ts_ns"] for a in results[0].released.alerts if a["detector"] == "zscore"]
    assert ref == z


async def test_released_fleet_statistics_equal_float_maths_over_released_windows() -> None:
    """Fleet mean and std equal numpy over the released windows' readings (secure run).

    Kills corrupting the released fleet Σx² (fleet standard deviation) in the program.
    """
    rng = np.random.default_rng(8)
    vals = [50.0 + 3.0 * g + rng.normal(0.0, 1.0 + g, 30 + 7 * g) for g in range(3)]
    streams = [_stream(f"g{g}", "m.temp", vals[g]) for g in range(3)]
    streams.append(_stream("g9", "m.temp", [99.0] * (MIN - 1)))  # withheld
    policy = _policy()
    _, decoded, _ = await secure_results(policy, streams)
    (fleet,) = decoded[0].fleet
    every = _fixed(np.concatenate(vals))
    assert fleet["count"] == every.size
    assert fleet["mean"] == pytest.approx(every.mean(), abs=1e-9)
    assert fleet["std"] == pytest.approx(every.std(), abs=1e-4)


async def test_a_policy_releasing_max_without_min_releases_the_max() -> None:
    """``release: [count, max]`` (no ``min``): the window's maximum is released alone.

    Kills ``"min" in fields or "max" in fields`` → ``… or "max" not in fields`` in
    ``build_release`` (the extrema would be left out when only ``max`` is released).
    """
    rng = np.random.default_rng(9)
    values = 50.0 + rng.normal(0.0, 1.0, MIN + 2)
    policy = _policy(release=["count", "max"])
    _, decoded, _ = await secure_results(policy, [_stream("g1", "m.temp", values)])
    (rel,) = decoded
    (win,) = rel.windows
    assert win["count"] == MIN + 2
    assert win["max"] == _fixed(values).max()
    assert "min" not in win
