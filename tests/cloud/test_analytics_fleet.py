"""The fleet-deviation flag is the textbook rule, in exact n-scaled integer form.

Textbook rule: a released stream's window deviates iff ``(x̄ − μ)² > k²·(σ² +
min_sigma²)``, x̄ its window mean, μ and σ² the mean and population variance of
all readings of its class's released windows in the epoch.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings
from tests.cloud.secure_run import secure_results

T0 = 1_700_000_000_000_000_000
S = 10_000_000_000
K = 2.0


def _policy() -> AnalyticsPolicy:
    return policy_from_mapping(
        {
            "window_s": 10,
            "min_count": 5,
            "release": ["count", "mean", "std", "fleet"],
            "fleet": {"classes": {"temp": ["*.temp"]}, "k": K, "min_sigma": 0.0},
        }
    )


def _class(streams: int, per: int, outlier: int, deviant: int) -> list[StreamReadings]:
    """Integer readings around 100 (the last stream ``deviant`` higher, the one
    before it 2 higher); the class's first reading is ``outlier`` above 100.

    The outlier puts the class's centre (its first reading) that far from its
    mean, where a variance from ``round(2^16/N)`` is low by up to N/2^17 of
    outlier²: more than σ² itself for the larger classes.
    """
    offsets = [0] * (streams - 2) + [2, deviant]
    seed = streams * per
    rng = np.random.default_rng(seed)
    out = []
    for g in range(streams):
        v = 100.0 + offsets[g] + rng.integers(-2, 3, per).astype(np.float64)
        if g == 0:
            v[0] = 100.0 + outlier
        ts = T0 + np.arange(per, dtype=np.int64) * (S // per)
        out.append(StreamReadings(f"gw{g:02d}", "m.temp", ts, v))
    return out


def _textbook(streams: list[StreamReadings]) -> tuple[dict[str, bool], dict[str, Fraction]]:
    """Exact flags and the ratio (x̄ − μ)²/(k²σ²) per gateway, in rationals."""
    every = [Fraction(int(v)) for s in streams for v in s.values]
    n = len(every)
    mu: Fraction = sum(every, Fraction(0)) / n
    var: Fraction = sum(((v - mu) ** 2 for v in every), Fraction(0)) / n
    flags: dict[str, bool] = {}
    ratio: dict[str, Fraction] = {}
    for s in streams:
        mean = sum((Fraction(int(v)) for v in s.values), Fraction(0)) / len(s.values)
        ratio[s.gateway] = (mean - mu) ** 2 / (Fraction(K) ** 2 * var)
        flags[s.gateway] = ratio[s.gateway] > 1
    return flags, ratio


@pytest.mark.parametrize(
    ("streams", "per", "outlier", "deviant"),
    [
        (8, 5, 0, 12),  # N = 40
        (6, 50, 40, 30),  # N = 300: round(2^16/300) = 218 for 218.45
        (8, 75, 50, 12),  # N = 600: round(2^16/600) = 109 for 109.23
        (8, 125, 50, 12),  # N = 1000
        (12, 100, 60, 10),  # N = 1200, 12 streams
    ],
)
async def test_fleet_flag_is_the_textbook_rule_for_every_class_size(
    streams: int, per: int, outlier: int, deviant: int
) -> None:
    """Secure = reference = textbook on integer readings, for class sizes 21 … 1000.

    Fails on the code before this change: it divided by ``round(2^32/m)``
    and ``round(2^16/N)``; with the class centred 50 units from its mean the
    rounded second moment made σ² far too small (or negative), and streams
    well inside k·σ were flagged as deviating.
    """
    data = _class(streams, per, outlier, deviant)
    want, ratio = _textbook(data)
    # the data stays clear of the threshold (the rule's documented band), and
    # both outcomes occur
    assert all(abs(r - 1) > Fraction(1, 10) for r in ratio.values()), ratio
    assert set(want.values()) == {True, False}
    results, decoded, _ = await secure_results(_policy(), data)
    (ref,) = [r.released for r in results]
    (sec,) = decoded
    got_ref = {w["gateway"]: w["deviates_from_fleet"] for w in ref.windows}
    got_sec = {w["gateway"]: w["deviates_from_fleet"] for w in sec.windows}
    assert got_ref == want
    assert got_sec == want


@pytest.mark.parametrize(("streams", "per"), [(8, 300), (12, 50_000)])
async def test_fleet_flag_on_large_classes(streams: int, per: int) -> None:
    """Long windows (m = 300) and a class of 600,000 readings (g < 0: two quantising
    truncations) still give the textbook flag on data clear of the threshold."""
    rng = np.random.default_rng(per)
    ts = T0 + np.arange(per, dtype=np.int64) * (S // per)
    offsets = [0.0, -4.0] + [0.0] * (streams - 3) + [15.0]
    data = [
        StreamReadings(f"gw{g:02d}", "m.temp", ts, np.round(500 + o + rng.normal(0, 3, per), 3))
        for g, o in enumerate(offsets)
    ]
    every = np.concatenate([s.values for s in data])
    ratio = {s.gateway: (s.values.mean() - every.mean()) ** 2 / (K**2 * every.var()) for s in data}
    assert all(abs(r - 1) > 0.1 for r in ratio.values())
    want = {g: bool(r > 1) for g, r in ratio.items()}
    assert set(want.values()) == {True, False}
    results, decoded, _ = await secure_results(_policy(), data)
    assert {w["gateway"]: w["deviates_from_fleet"] for w in results[0].released.windows} == want
    assert {w["gateway"]: w["deviates_from_fleet"] for w in decoded[0].windows} == want
