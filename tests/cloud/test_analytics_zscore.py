"""The rolling z-score is the textbook rule; slow trends do not fire it; flatline detection.

Textbook rule: flag x_t iff |x_t − μ| > k·σ with μ and σ² the mean and
population variance of the previous n = min(t, W) readings (plus the policy's
variance floors). It is evaluated here in exact integer arithmetic on the
fixed-point readings the gateway encodes.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_tecc.analytics.detectors import zscore_band
from cloud_tecc.analytics.ops import PlainOps
from cloud_tecc.analytics.plan import EpochInput, StreamState
from cloud_tecc.analytics.policy import (
    AnalyticsPolicy,
    policy_from_mapping,
    zscore_bits,
)
from cloud_tecc.analytics.program import run_epoch
from cloud_tecc.analytics.reference import ReferenceAnalytics, StreamReadings, run_reference
from cloud_tecc.errors import CloudConfigError
from tests.cloud.secure_run import secure_results

T0 = 1_700_000_000_000_000_000
S = 10_000_000_000
F = 65536


def _policy(window: int, k: float, **extra: Any) -> AnalyticsPolicy:
    z = {"window": window, "k": k, "min_sigma": 0.0, "min_baseline": min(window, 5)}
    return policy_from_mapping(
        {"window_s": 10, "min_count": 5, "zscore": z | extra.pop("zscore", {})} | extra
    )


def _stream(values: Any, per_epoch: int = 400, sensor: str = "m.temp") -> StreamReadings:
    v = np.asarray(values, dtype=np.float64)
    i = np.arange(v.size, dtype=np.int64)
    ts = T0 + (i // per_epoch) * S + (i % per_epoch) * (S // per_epoch)
    return StreamReadings("g1", sensor, ts, v)


def textbook(
    values: Any, window: int, k: float, min_baseline: int, floor2: float = 0.0
) -> tuple[list[bool | None], list[tuple[int, float, float]]]:
    """Exact flags (None: no baseline) and per reading (n, |x − μ|, σ_eff) in real units."""
    x = [int(v) for v in np.rint(np.asarray(values, dtype=np.float64) * F)]
    k2, fl = Fraction(k) ** 2, Fraction(floor2) * F * F
    c1, c2 = [0], [0]
    for v in x:
        c1.append(c1[-1] + v)
        c2.append(c2[-1] + v * v)
    flags: list[bool | None] = []
    stats = []
    for t, v in enumerate(x):
        n = min(t, window)
        if n < min_baseline:
            flags.append(None)
            stats.append((n, 0.0, 0.0))
            continue
        s1, s2 = c1[t] - c1[t - n], c2[t] - c2[t - n]
        d, var = n * v - s1, n * s2 - s1 * s1  # n·(x − μ), n²·σ² (units 2^-16, 2^-32)
        flags.append(d * d > k2 * (var + n * n * fl))
        stats.append((n, abs(d) / n / F, float(np.sqrt(float(var + n * n * fl))) / n / F))
    return flags, stats


def _flags(released: Any, stream: StreamReadings, detector: str = "zscore") -> list[bool]:
    key = (stream.gateway, stream.sensor, detector)
    hit = {
        a["ts_ns"]
        for r in released
        for a in r.alerts
        if (a["gateway"], a["sensor"], a["detector"]) == key
    }
    return [int(t) in hit for t in stream.timestamps_ns]


@pytest.mark.parametrize("window", [7, 100, 300, 600, 1000])
async def test_secure_zscore_equals_the_textbook_rule_on_integer_readings(window: int) -> None:
    """Integer readings (exact in every step): for k in {2, 3, 6} the secure flags equal the
    textbook rule on every reading. The stream drifts 1500 units away from its first
    reading (a warm-up) with ±3 noise and outliers. Fails on the code before this change
    (rounded reciprocals 1/n: a variance low by up to 100 % far from the centre)."""
    rng = np.random.default_rng(window)
    m = 2 * window + 300
    drift = np.rint(1500 * (1 - np.exp(-np.arange(m) / (window / 8 + 10))))
    v = 100 + drift + rng.integers(-3, 4, m)
    spikes = rng.choice(np.arange(m - 300, m), 16, replace=False)
    v[spikes] += rng.choice([-300, -12, 12, 300], 16)
    stream = _stream(v)
    for k in (2.0, 3.0, 6.0):
        policy = _policy(window, k)
        results, decoded, _ = await secure_results(policy, [stream])
        want, _ = textbook(v, window, k, policy.zscore.min_baseline)
        got = _flags(decoded, stream)
        ref = _flags([r.released for r in results], stream)
        assert got == ref
        assert sum(w is True for w in want) >= 5
        assert got == [bool(w) for w in want], (window, k)


def _assert_within_band(
    got: list[bool],
    want: list[bool | None],
    stats: list[tuple[int, float, float]],
    k: float,
    *,
    g: int,
) -> int:
    differ = 0
    for f, w, (n, d, sig) in zip(got, want, stats, strict=True):
        if w is None:
            assert not f
            continue
        if f != w:
            differ += 1
            gap = abs(d - k * sig)
            assert gap <= float(zscore_band(k, g, n, sig)), (n, d, sig, gap)
    return differ


@settings(max_examples=40, deadline=None)
@given(
    window=st.sampled_from([7, 30, 100, 333, 600]),
    k=st.sampled_from([2.0, 2.5, 3.0, 4.7, 6.0]),
    scale=st.sampled_from([1e-3, 0.05, 1.0, 30.0]),
    offset=st.floats(-3000.0, 3000.0),
    min_sigma=st.sampled_from([0.0, 0.01]),
    seed=st.integers(0, 2**32 - 1),
)
def test_reference_zscore_stays_within_the_documented_band(
    window: int, k: float, scale: float, offset: float, min_sigma: float, seed: int
) -> None:
    """Random streams (noise at any scale, drift, outliers, far from 0): every flag that
    differs from the exact textbook rule is within :func:`zscore_band` of its threshold."""
    rng = np.random.default_rng(seed)
    m = window + 150
    v = offset + scale * (rng.normal(0, 1, m) + np.linspace(0, rng.uniform(-20, 20), m))
    v[rng.integers(0, m, 5)] += scale * rng.choice([-8.0, 8.0], 5)
    policy = _policy(window, k, zscore={"min_sigma": min_sigma})
    stream = _stream(v)
    got = _flags([r.released for r in run_reference(policy, [stream])], stream)
    want, stats = textbook(v, window, k, policy.zscore.min_baseline, min_sigma**2)
    _assert_within_band(got, want, stats, k, g=policy.zscore_bits)


async def test_secure_zscore_stays_within_the_documented_band() -> None:
    """The same band holds for the secure run (MPC truncations one LSB high at most)."""
    rng = np.random.default_rng(21)
    for window, k, scale in ((600, 3.0, 0.15), (100, 2.5, 4.0), (333, 6.0, 0.01)):
        m = window + 300
        v = 70.0 + scale * (rng.normal(0, 1, m) + np.linspace(0, 5, m))
        policy = _policy(window, k)
        stream = _stream(v)
        _, decoded, _ = await secure_results(policy, [stream])
        want, stats = textbook(v, window, k, policy.zscore.min_baseline)
        _assert_within_band(_flags(decoded, stream), want, stats, k, g=policy.zscore_bits)


async def test_slow_warm_up_with_a_resolution_floor_raises_no_zscore_flag() -> None:
    """A bearing warming 20 → 70 °C (τ = 4 min, 5 Hz, noise 0.15 °C, readings rounded to the
    sensor's 0.1 °C) raises no flag with the demo's z-score (W = 300, k = 6, min_sigma 0.05)
    and the declared resolution; a real 3 °C jump still does. Fails on the code before this
    change (its variance went negative far from the first reading: every reading flagged)."""
    rng = np.random.default_rng(2)
    t = np.arange(5 * 600) / 5.0
    v = np.round(70 - 50 * np.exp(-t / 240) + rng.normal(0, 0.15, t.size), 1)
    v[2500] += 3.0
    policy = policy_from_mapping(
        {
            "window_s": 10,
            "min_count": 5,
            "zscore": {"window": 300, "k": 6.0, "min_sigma": 0.05, "min_baseline": 30},
            "resolutions": [{"sensor": "*.bearing_temp", "step": 0.1}],
        }
    )
    stream = _stream(v, per_epoch=50, sensor="m1.bearing_temp")
    results, decoded, _ = await secure_results(policy, [stream])
    got = _flags(decoded, stream)
    assert got == _flags([r.released for r in results], stream)
    assert [i for i, f in enumerate(got) if f] == [2500]


def test_resolution_floor_stops_flags_at_quantisation_steps_of_a_slow_ramp() -> None:
    """A slow ramp (1.1 mK per reading) read at 0.1 °C resolution sits on one value for ~90
    readings, longer than W = 50: σ = 0 and every 0.1 step flags (165 flags) unless the
    declared resolution is a noise floor (0 flags)."""
    rng = np.random.default_rng(0)
    v = np.round(40 + 0.0011 * np.arange(3000) + rng.normal(0, 0.005, 3000), 1)
    stream = _stream(v, per_epoch=50, sensor="m1.bearing_temp")
    counts = []
    for res in ([], [{"sensor": "*.bearing_temp", "step": 0.1}]):
        z = {"window": 50, "k": 3.0, "min_sigma": 0.01, "min_baseline": 30}
        pol = policy_from_mapping({"window_s": 10, "min_count": 5, "zscore": z, "resolutions": res})
        counts.append(sum(_flags([r.released for r in run_reference(pol, [stream])], stream)))
    assert counts[0] > 100
    assert counts[1] == 0


async def test_flatline_flags_a_stuck_sensor_and_secure_equals_reference() -> None:
    """Per window: std of the last ``span`` readings below ``min_std`` flags the window's last
    reading; a noisy window does not; a span not yet filled does not."""
    rng = np.random.default_rng(5)
    noisy = 50.0 + rng.normal(0, 0.2, 200)
    stuck = np.full(200, 51.3)
    v = np.concatenate([noisy, stuck, noisy])
    policy = policy_from_mapping(
        {
            "window_s": 10,
            "min_count": 5,
            "zscore": {"window": 100, "min_baseline": 20},
            "flatline": [{"sensor": "*.temp", "span": 60, "min_std": 0.01}],
        }
    )
    stream = _stream(v, per_epoch=40)
    from_start = StreamReadings("g0", "m.temp", stream.timestamps_ns[:200], stuck.copy())
    results, decoded, _ = await secure_results(policy, [stream, from_start])
    for s, want in ((stream, [279, 319, 359, 399]), (from_start, [79, 119, 159, 199])):
        got = _flags(decoded, s, "flatline")
        assert got == _flags([r.released for r in results], s, "flatline")
        # windows end at 39, 79, ...; a span of 60 readings lies inside the stuck
        # readings (200..399, resp. 0..199) for the windows ending at these readings; the
        # first window of ``from_start`` holds only 40 (span not filled: no flag).
        assert [i for i, f in enumerate(got) if f] == want


def test_headroom_is_checked_and_named() -> None:
    """g = min(16, 31 − B − ⌈log2 W⌉); overflowing or out-of-range settings are refused."""
    assert zscore_bits(12, 600) == 9
    assert zscore_bits(12, 1000) == 9
    assert zscore_bits(12, 1024) == 9
    assert zscore_bits(12, 1025) == 8
    assert zscore_bits(4, 7) == 16
    assert zscore_bits(20, 100_000) < 0
    # min_sigma is in the sensor's unit now (mapped into each stream's scale, clamped)
    assert policy_from_mapping({"value_bound_bits": 4, "zscore": {"min_sigma": 9.0}})
    with pytest.raises(CloudConfigError, match=r"span 700 must be <= zscore\.window 600"):
        policy_from_mapping({"flatline": [{"sensor": "*", "span": 700, "min_std": 0.1}]})
    with pytest.raises(CloudConfigError, match=r"\$\.resolutions\[0\]\.step"):
        policy_from_mapping({"resolutions": [{"sensor": "*", "step": 0}]})


async def test_a_state_of_the_older_layout_starts_the_stream_afresh() -> None:
    """A stored state whose ``hist_yy`` holds one value per reading (the previous release's
    squares) is not misread as quantised values: the stream restarts its baseline."""
    policy = _policy(50, 3.0)
    stream = _stream(np.full(20, 40.0) + np.arange(20) % 3)
    (r,) = await ReferenceAnalytics(policy).run([stream])
    (s,) = r.epoch.streams
    old = StreamState(s.x[:1], s.x[:10], s.x[:10])
    assert not old.compatible
    assert r.output.states[0].compatible
    ops = PlainOps()
    fresh = await run_epoch(ops, policy, r.epoch)
    stale = await run_epoch(ops, policy, EpochInput(r.epoch.start_ns, (replace(s, state=old),)))
    for a, b in zip(fresh.states, stale.states, strict=True):
        assert np.array_equal(a.hist_yy, b.hist_yy)
    assert np.array_equal(fresh.zscore, stale.zscore)


async def test_flatline_of_a_small_threshold_is_flagged_by_the_secure_run_too() -> None:
    """A stuck reading with min_std 0.002 (threshold ≈ 1 unit of ⌊V/2^16⌋ at g = 10) is
    flagged by MPC exactly as by the reference, window after window.

    Fails on the code before this change: V was truncated by 2^16 first, one LSB
    high at random in MPC, so ⌊V/2^16⌋ = 0 became 1 and the stuck window was missed.
    """
    policy = _policy(
        300,
        6.0,
        release=["count", "flatline_alerts"],
        flatline=[{"sensor": "*", "span": 100, "min_std": 0.002}],
    )
    rng = np.random.default_rng(5)
    values = np.concatenate([7 + rng.normal(0, 0.02, 400), np.full(2000, 7.0676)])
    results, decoded, _ = await secure_results(policy, [_stream(values)])
    ref = [len(r.released.alerts) for r in results]
    sec = [len(d.alerts) for d in decoded]
    assert ref == sec
    assert sum(sec) >= 4  # the stuck epochs flag
