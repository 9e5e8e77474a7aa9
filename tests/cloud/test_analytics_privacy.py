"""No released aggregate, alone or combined with others, isolates a withheld window.

The rule (docs/THREAT_MODEL.md, "Released aggregates"): every released sum
covers whole released windows only, so the released aggregates of an epoch and
of all earlier epochs span no vector that is non-zero on a withheld window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.analytics.release import build_release, check_layout
from cloud_tecc.errors import AnalyticsError
from tests.cloud.secure_run import secure_results

T0 = 1_700_000_000_000_000_000
S = 10_000_000_000


def _policy(min_count: int = 10, **extra: Any) -> AnalyticsPolicy:
    return policy_from_mapping(
        {
            "window_s": 10,
            "min_count": min_count,
            "fleet": {"classes": {"temperature": ["*.temp"], "pressure": ["*.press"]}},
        }
        | extra
    )


def _stream(gw: str, sensor: str, values: list[float], epoch: int = 0) -> StreamReadings:
    n = len(values)
    ts = T0 + epoch * S + np.arange(n, dtype=np.int64) * (S // (n + 1))
    return StreamReadings(gw, sensor, ts, np.asarray(values, dtype=np.float64))


async def test_withheld_reading_is_not_recoverable_from_the_fleet_statistics() -> None:
    """gw-A: 100 readings (released), gw-B: 1 reading (withheld), one class, real 2-party MPC.

    Fleet minus the released window must not give gw-B's reading back. Fails on
    the code before this change (fleet sums covered the withheld window:
    recovered 73.125 = the reading, and its square).
    """
    rng = np.random.default_rng(3)
    a = list(np.round(60.0 + rng.normal(0.0, 1.0, 100), 3))
    streams = [_stream("gw-A", "line1.temp", a), _stream("gw-B", "line1.temp", [73.125])]
    policy = _policy()
    results, decoded, _ = await secure_results(policy, streams)
    (rel,) = decoded
    assert rel.windows == results[0].released.windows
    assert rel.fleet == results[0].released.fleet
    win = {w["gateway"]: w for w in rel.windows}
    assert win["gw-B"] == {"gateway": "gw-B", "sensor": "line1.temp", "start_ns": T0, "count": 1}
    (fleet,) = rel.fleet
    assert fleet["count"] == 100
    recovered = fleet["mean"] * fleet["count"] - win["gw-A"]["mean"] * 100
    assert abs(recovered) < 1e-6
    assert abs(recovered - 73.125) > 1.0
    sq = (fleet["std"] ** 2 + fleet["mean"] ** 2) * 100
    sq_a = (win["gw-A"]["std"] ** 2 + win["gw-A"]["mean"] ** 2) * 100
    assert abs(sq - sq_a) < 1e-3


def test_output_refuses_a_fleet_count_that_includes_a_withheld_window() -> None:
    """The layout check recomputes each class total from the released window counts.

    Fails on the code before this change (only fleet count >= min_count was checked).
    """
    policy = _policy()
    streams = [_stream("gw-A", "line1.temp", [60.0] * 100), _stream("gw-B", "line1.temp", [73.0])]
    r = run_reference(policy, streams)[0]
    layout = build_release(policy, r.epoch, r.output, 16).layout
    check_layout(policy, as_layout(layout))
    assert layout["fleet"] == [{"class": "temperature", "count": 100, "fields": ["sum", "sumsq"]}]
    forged = dict(layout, fleet=[dict(layout["fleet"][0], count=101)])
    with pytest.raises(AnalyticsError, match="released windows"):
        check_layout(policy, as_layout(forged))
    twice = dict(layout, fleet=layout["fleet"] * 2)
    with pytest.raises(AnalyticsError, match="twice"):
        check_layout(policy, as_layout(twice))


# -- property: the released aggregates span no withheld window --------------------------

MIN = 3
SENSORS = ("a.temp", "b.temp", "c.press", "d.other")
_counts = st.sampled_from([0, 0, 1, MIN - 1, MIN, MIN + 1, 7])


def _probe_streams(
    counts: dict[tuple[str, str, int], int], hot: tuple[str, str, int] | None
) -> list[StreamReadings]:
    out = []
    for gw, sensor in sorted({(g, s) for g, s, _ in counts}):
        ts_parts, val_parts = [], []
        for (g, s, e), n in sorted(counts.items()):
            if (g, s) != (gw, sensor) or not n:
                continue
            ts_parts.append(T0 + e * S + np.arange(n, dtype=np.int64) * (S // (n + 1)))
            val_parts.append(np.full(n, 1.0 if (g, s, e) == hot else 0.0))
        if ts_parts:
            ts, vals = np.concatenate(ts_parts), np.concatenate(val_parts)
            out.append(StreamReadings(gw, sensor, ts, vals))
    return out


def _aggregate_rows(
    policy: AnalyticsPolicy, counts: dict[tuple[str, str, int], int]
) -> tuple[np.ndarray[Any, Any], list[tuple[str, str, int]]]:
    """Matrix: one row per released Σx (windows and fleet classes, every epoch), one
    column per window; entry = readings of that window the aggregate sums (by probing)."""
    cols = [w for w in sorted(counts) if counts[w]]
    rows: dict[tuple[Any, ...], list[float]] = {}
    for j, hot in enumerate(cols):
        for r in run_reference(policy, _probe_streams(counts, hot)):
            e = (r.epoch.start_ns - T0) // S
            for w in r.released.windows:
                if "mean" in w:
                    key: tuple[Any, ...] = ("w", w["gateway"], w["sensor"], e)
                    rows.setdefault(key, [0.0] * len(cols))[j] = w["mean"] * w["count"]
            for f in r.released.fleet:
                if "mean" in f:
                    key = ("f", f["class"], e)
                    rows.setdefault(key, [0.0] * len(cols))[j] = f["mean"] * f["count"]
    mat = np.round(np.array(list(rows.values()), dtype=np.float64).reshape(-1, len(cols)))
    return mat, cols


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["g0", "g1", "g2"]), st.sampled_from(SENSORS), st.integers(0, 2)),
        _counts,
        min_size=1,
        max_size=9,
    )
)
def test_no_combination_of_released_aggregates_isolates_a_withheld_window(
    counts: dict[tuple[str, str, int], int],
) -> None:
    """For random class/count mixes over three epochs, the indicator vector of every
    withheld window is outside the span of all released aggregates (same and earlier
    epochs). Fails on the code before this change (fleet sums included withheld windows,
    so fleet − Σ released windows = the withheld window)."""
    policy = policy_from_mapping(
        {
            "window_s": 10,
            "min_count": MIN,
            "fleet": {"classes": {"temperature": ["*.temp"], "pressure": ["*.press"]}},
        }
    )
    if not any(counts.values()):
        return
    mat, cols = _aggregate_rows(policy, counts)
    rank = np.linalg.matrix_rank(mat) if mat.size else 0
    for j, w in enumerate(cols):
        if counts[w] >= MIN:
            continue
        e = np.zeros((1, len(cols)))
        e[0, j] = 1.0
        grown = np.vstack([mat, e]) if mat.size else e
        assert np.linalg.matrix_rank(grown) == rank + 1, f"window {w} is isolated"
    # and every fleet class total is the sum of its released windows' totals
    for r in run_reference(policy, _probe_streams(counts, None)):
        lay = build_release(policy, r.epoch, r.output, 16).layout
        check_layout(policy, as_layout(lay))
