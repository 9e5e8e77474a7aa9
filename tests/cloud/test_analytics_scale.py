"""Any declared range at full precision: every statistic and detector in the sensor's unit.

The gateway shares ``(x − offset)/2^e`` (:mod:`tecc_contract.scale`); the
clusters map the policy's thresholds into that scale and the output service
undoes it. Each test fails on the code before this change, where the ring
held |x| < 4096 in the sensor's own unit (a 0–24,000 rpm reading wrapped, a
range like 0–10^9 could not be declared).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from cloud_tecc.analytics.detectors import zscore_band
from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.plan import EpochInput
from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.analytics.release import build_release, check_layout, decode
from cloud_tecc.analytics.secure import secure_epoch
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork
from cloud_tecc.output.collector import balance_fleet
from cloud_tecc.party.epochs import build_epoch
from cloud_tecc.party.store import StoredSegment
from tecc_contract.envelope import ClusterKey, Opener, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite
from tecc_contract.scale import Scale
from tests.cloud.secure_run import secure_results
from tests.contract.helpers import ed25519_from_seed, keys_for, seeded_random_bytes

T0 = 1_700_000_000_000_000_000
S = 10_000_000_000
RANGES = [(0.0, 24_000.0), (-40.0, 125.0), (0.0, 1e7), (0.0, 1e9)]
RESOLUTION = 2.0**-20  # of the range: the target for every released statistic


def _policy(low: float, high: float, **extra: Any) -> AnalyticsPolicy:
    span = high - low
    doc: dict[str, Any] = {
        "window_s": 10,
        "min_count": 5,
        "limits": [{"sensor": "*", "low": low + 0.25 * span, "high": high - 0.25 * span}],
        "zscore": {"window": 100, "k": 3.0, "min_sigma": 0.0, "min_baseline": 30},
    }
    return policy_from_mapping(doc | extra)


def _stream(sensor: str, values: Any, scale: Scale, gateway: str = "g1") -> StreamReadings:
    v = np.asarray(values, dtype=np.float64)
    i = np.arange(v.size, dtype=np.int64)
    ts = T0 + (i // 200) * S + (i % 200) * (S // 200)
    return StreamReadings(gateway, sensor, ts, v, scale)


def _near_the_ends(low: float, high: float, seed: int) -> np.ndarray:
    """Three epochs: within 10^−3 of the range below ``high``, above ``low``, then ``high``
    with spikes to the middle of the range (z-score and limit flags)."""
    rng = np.random.default_rng(seed)
    span = high - low
    top = high - span * 1e-3 * rng.random(200)
    bottom = low + span * 1e-3 * rng.random(200)
    back = high - span * 1e-4 * rng.random(200)
    back[[60, 120, 180]] = low + 0.5 * span
    out: np.ndarray = np.concatenate([top, bottom, back])
    return out


def _released_flags(released: Any, stream: StreamReadings, detector: str) -> list[bool]:
    hit = {
        int(a["ts_ns"])
        for r in released
        for a in r.alerts
        if (a["sensor"], a["detector"]) == (stream.sensor, detector)
    }
    return [int(t) in hit for t in stream.timestamps_ns]


@pytest.mark.parametrize(("low", "high"), RANGES)
async def test_statistics_near_the_ends_of_any_range_match_float_maths(
    low: float, high: float
) -> None:
    """Released mean, std, min, max within 2^−20 of the range of numpy's, secure = reference."""
    scale = Scale.for_range(low, high, 12)
    stream = _stream("s", _near_the_ends(low, high, 1), scale)
    ref, secure, _ = await secure_results(_policy(low, high), [stream])
    tol = RESOLUTION * (high - low)
    worst = 0.0
    for r, dec in zip(ref, secure, strict=True):
        (w,) = r.released.windows
        assert dec.windows == r.released.windows  # every statistic bit for bit
        vals = stream.values[(stream.timestamps_ns // S) * S == w["start_ns"]]
        want = {"mean": vals.mean(), "std": vals.std(), "min": vals.min(), "max": vals.max()}
        for key, value in want.items():
            worst = max(worst, abs(w[key] - value) / (high - low))
            assert abs(w[key] - value) <= tol, (key, w[key], value)
    assert worst <= RESOLUTION


@pytest.mark.parametrize(("low", "high"), RANGES)
async def test_limits_fire_exactly_at_the_boundary(low: float, high: float) -> None:
    """A reading exactly at a limit never flags; 2^−20 of the range beyond it always does."""
    span = high - low
    lim_lo, lim_hi = low + 0.25 * span, high - 0.25 * span
    d = RESOLUTION * span
    probe = [lim_lo, lim_hi, lim_lo - d, lim_hi + d, lim_lo + d, lim_hi - d, low, high]
    values = np.array(probe * 4)
    stream = _stream("edge", values, Scale.for_range(low, high, 12))
    ref, secure, _ = await secure_results(_policy(low, high), [stream])
    textbook = [v < lim_lo or v > lim_hi for v in values]
    assert _released_flags([r.released for r in ref], stream, "limit") == textbook
    assert _released_flags(secure, stream, "limit") == textbook


@pytest.mark.parametrize(("low", "high"), RANGES)
async def test_zscore_flags_are_the_textbook_rule_in_any_unit(low: float, high: float) -> None:
    """|x − μ| > k·σ over the previous W readings (float maths on the physical readings):
    the secure flags agree outside the documented band (in the sensor's unit: the scaled
    band times 2^e), and the spikes flag."""
    scale = Scale.for_range(low, high, 12)
    rng = np.random.default_rng(5)
    span = high - low
    v = high - span * 0.01 + span * 1e-3 * rng.normal(0, 1, 600)
    spikes = [150, 300, 450, 590]
    v[spikes] -= span * 0.2
    stream = _stream("z", v, scale)
    policy = _policy(low, high, limits=[])
    _, secure, _ = await secure_results(policy, [stream])
    got = _released_flags(secure, stream, "zscore")
    w, k, g = 100, 3.0, policy.zscore_bits
    checked = 0
    for t in range(30, v.size):
        prev = v[max(0, t - w) : t]
        mu, sigma = prev.mean(), prev.std()
        band = float(zscore_band(k, g, len(prev), sigma / 2.0**scale.exponent)[()])
        gap = abs(v[t] - mu) - k * sigma
        if abs(gap) > band * 2.0**scale.exponent:
            checked += 1
            assert got[t] == (gap > 0), (t, gap)
    assert checked >= 560
    assert all(got[t] for t in spikes)


async def _secure_from_frames(
    policy: AnalyticsPolicy, sealer: Sealer, openers: list[Opener], seg: SensorSegment
) -> Any:
    """Seal, open at both parties, build the epoch as a party does, run, release, decode."""
    frames = sealer.seal(1, [seg], created_ns=T0)
    epochs = []
    for opener, frame in zip(openers, frames, strict=True):
        op = opener.open(frame)
        (meta,) = op.header.segments
        stored = StoredSegment(
            "gw", 1, 0, meta.sensor_id, meta.timestamps_ns, op.columns[Column.VALUE],
            op.columns[Column.SQUARE], meta.scale,
        )  # fmt: skip
        epochs.append(build_epoch(T0, T0 + S, [stored], {}))
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    parties = [Party(i, 2, net.transport(i), dealer.source(i)) for i in range(2)]

    async def run(i: int, epoch: EpochInput) -> Any:
        return await secure_epoch(parties[i], policy, epoch)

    (_, r0), (_, r1) = await asyncio.gather(*(run(i, e) for i, e in enumerate(epochs)))
    assert r0.layout == r1.layout
    check_layout(policy, as_layout(r0.layout))
    return decode(as_layout(r0.layout), r0.vector + r1.vector)


async def test_a_reading_of_50000_in_0_100000_raises_the_limit_alert() -> None:
    """Gateway sealer → envelope header (scale) → party epoch → MPC → output: the reading of
    50000 under limits [10, 90] is flagged and the window's statistics are in the unit.

    Fails on the code before this change: it wrapped in the ring and raised no alert.
    """
    policy = policy_from_mapping(
        {"window_s": 10, "min_count": 5, "limits": [{"sensor": "rpm", "low": 10, "high": 90}]}
    )
    keys = keys_for(KemSuite.X25519, 2)
    gw = ed25519_from_seed(b"gw")
    sealer = Sealer(
        gateway_id="gw",
        signing_key=gw,
        clusters=[ClusterKey(i, KemSuite.X25519, pub) for i, (_, pub) in enumerate(keys)],
        columns=(Column.VALUE, Column.SQUARE),
        scales={"rpm": Scale.for_range(0.0, 100_000.0, 12)},
        random_bytes=seeded_random_bytes(b"scale"),
    )
    openers = [
        Opener(party=i, suite=KemSuite.X25519, private_key=sk, gateway_keys={"gw": gw.public_key()})
        for i, (sk, _) in enumerate(keys)
    ]
    values = np.array([50.0, 60.0, 50_000.0, 70.0, 90.0, 10.0, 99_999.0, 0.0])
    ts = T0 + np.arange(values.size, dtype=np.int64) * 1000
    dec = await _secure_from_frames(policy, sealer, openers, SensorSegment("rpm", ts, values))
    flagged = sorted(int(a["ts_ns"]) for a in dec.alerts if a["detector"] == "limit")
    assert flagged == [int(ts[2]), int(ts[6]), int(ts[7])]
    (w,) = dec.windows
    tol = RESOLUTION * 100_000
    assert abs(w["mean"] - values.mean()) <= tol
    assert abs(w["std"] - values.std()) <= tol
    assert (w["min"], w["max"]) == (0.0, 99_999.0)


def test_fleet_class_across_sensors_of_one_scale() -> None:
    """Spindles of 0–12,000 and 0–24,000 rpm sharing the union's scale form one fleet class
    whose released mean/std match float maths; a sensor of another scale is left out of the
    class (and the output's balance check agrees)."""
    union = Scale.for_range(0.0, 24_000.0, 12)
    other = Scale.for_range(0.0, 12_000.0, 12)
    rng = np.random.default_rng(2)
    a = 9_000 + rng.normal(0, 30, 200)
    b = 23_000 + rng.normal(0, 30, 200)
    c = 11_000 + rng.normal(0, 30, 200)
    streams = [
        _stream("m.spindle", a, union, "gw-a"),
        _stream("m.spindle", b, union, "gw-b"),
        _stream("m.spindle", c, other, "gw-c"),
    ]
    policy = policy_from_mapping(
        {
            "window_s": 10,
            "min_count": 5,
            "fleet": {"classes": {"speed": ["*.spindle"]}, "k": 3.0, "min_sigma": 1.0},
        }
    )
    (r,) = run_reference(policy, streams)
    (fleet,) = r.released.fleet
    both = np.concatenate([a, b])
    assert fleet["count"] == 400
    assert abs(fleet["mean"] - both.mean()) <= RESOLUTION * 24_000
    assert abs(fleet["std"] - both.std()) <= RESOLUTION * 24_000
    dev = {w["gateway"]: w.get("deviates_from_fleet") for w in r.released.windows}
    assert dev == {"gw-a": False, "gw-b": False, "gw-c": None}
    rel = build_release(policy, r.epoch, r.output, 16)
    check_layout(policy, as_layout(rel.layout))
    kept, dropped = balance_fleet(policy, as_layout(rel.layout), r.released)
    assert dropped == ()
    assert kept.fleet == r.released.fleet
