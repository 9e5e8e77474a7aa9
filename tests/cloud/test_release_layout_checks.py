"""The output side's defence in depth: check_layout and decode refuse what does not fit.

Not the min_count boundaries (tested with the analytics): here a layout that
releases a detector or fleet statistics the policy withholds, a malformed
layout, a vector of the wrong length, wrong flag lanes or party counts,
alerts that do not fit their window, malformed timestamps and flags that are
not 0/1. Each case names the bench.mutation mutant of release.py it kills.
"""

from __future__ import annotations

import base64
import copy
import zlib
from typing import Any

import numpy as np
import pytest

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.analytics.release import build_release, check_layout, decode
from cloud_tecc.errors import AnalyticsError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray

T0 = 1_700_000_000_000_000_000
RULES: dict[str, Any] = {
    "window_s": 10,
    "min_count": 5,
    "rates": [{"sensor": "*", "max_delta": 1.0}],
}
POLICY = policy_from_mapping(RULES)
CODEC = FixedPoint()


def _release() -> tuple[dict[str, Any], RingArray]:
    ts = T0 + np.arange(50, dtype=np.int64) * 100_000_000
    vals = np.sin(np.arange(50) / 3.0) * 4.0
    (res,) = run_reference(POLICY, [StreamReadings("gw", "s", ts, vals)])
    rel = build_release(POLICY, res.epoch, res.output, 16)
    assert any(a["detector"] == "rate" for a in rel.layout["alerts"])
    return rel.layout, rel.vector


def test_layout_beyond_the_policy_is_refused() -> None:
    """A withheld detector, withheld fleet statistics or fleet flags, a malformed layout."""
    layout, _ = _release()
    check_layout(POLICY, as_layout(layout))
    everything_but = [
        "count", "mean", "std", "min", "max", "limit_alerts", "zscore_alerts", "fleet"
    ]  # fmt: skip
    no_rate = policy_from_mapping({**RULES, "release": everything_but})
    with pytest.raises(AnalyticsError, match="detector 'rate' is not released"):
        check_layout(no_rate, as_layout(layout))
    no_fleet = policy_from_mapping({**RULES, "release": ["count", "mean", "rate_alerts"]})
    quiet = {**layout, "windows": [], "alerts": []}
    with_fleet = {**quiet, "fleet": [{"class": "c", "count": 100, "fields": ["sum"]}]}
    with pytest.raises(AnalyticsError, match="fleet statistics are not released"):
        check_layout(no_fleet, as_layout(with_fleet))
    only_flags = {
        **quiet,
        "fleet": [],
        "fleet_dev": [{"gateway": "gw", "sensor": "s", "class": "c"}],
    }
    with pytest.raises(AnalyticsError, match="fleet statistics are not released"):
        check_layout(no_fleet, as_layout(only_flags))
    with pytest.raises(AnalyticsError, match="malformed release layout"):
        check_layout(POLICY, as_layout({k: v for k, v in layout.items() if k != "alerts"}))


def test_vector_length_and_flag_lanes_are_checked() -> None:
    """Wrong length, other lane width and party counts outside 1..15 are refused."""
    layout, vector = _release()
    decode(as_layout(layout), vector)
    with pytest.raises(AnalyticsError, match="length"):
        decode(as_layout(layout), vector[:-1])
    with pytest.raises(AnalyticsError, match="4-bit lanes"):
        decode(as_layout({**layout, "flag_lane_bits": 8}), vector)
    with pytest.raises(AnalyticsError, match="at most 15 parties"):
        decode(as_layout({**layout, "parties": 16}), vector)
    with pytest.raises(AnalyticsError, match=r"malformed release layout: .* `\$.parties`"):
        as_layout({**layout, "parties": 0})  # refused where the layout is decoded
    assert (
        decode(as_layout({**layout, "parties": 15}), vector).alerts
        == decode(as_layout(layout), vector).alerts
    )


def test_alerts_must_fit_their_window() -> None:
    """No timestamps, a count that disagrees or a negative first position: refused."""
    layout, vector = _release()
    no_ts = copy.deepcopy(layout)
    del no_ts["windows"][0]["ts"]
    with pytest.raises(AnalyticsError, match="carries no timestamps"):
        decode(as_layout(no_ts), vector)
    recount = copy.deepcopy(layout)
    recount["windows"][0]["count"] += 1  # only the count disagrees
    with pytest.raises(AnalyticsError, match="do not match their window"):
        decode(as_layout(recount), vector)
    shifted = copy.deepcopy(layout)
    shifted["alerts"][0]["first"] = -1  # refused where the layout is decoded
    with pytest.raises(AnalyticsError, match=r"`\$.alerts\[0\].first`"):
        as_layout(shifted)


def test_malformed_timestamps_are_refused() -> None:
    """Text that is not base64, and a payload not a multiple of 8 bytes."""
    layout, vector = _release()
    for bad in ("!!not-base64!!", base64.b64encode(zlib.compress(bytes(7))).decode()):
        broken = copy.deepcopy(layout)
        broken["windows"][0]["ts"] = bad
        with pytest.raises(AnalyticsError, match="malformed window timestamps"):
            decode(as_layout(broken), vector)


def test_fleet_rows_and_deviation_flags_decode_and_flags_must_be_0_or_1() -> None:
    """A fleet class decodes to its mean and std; a deviation flag of 2 is refused."""
    layout, vector = _release()
    n = len(vector)
    fleet = {
        **layout,
        "fleet": [{"class": "c", "count": 4, "fields": ["sum", "sumsq"]}],
        "fleet_dev": [{"gateway": "gw", "sensor": "s", "class": "c"}],
    }
    extra = [CODEC.encode_scalar(8.0), CODEC.encode_scalar(20.0)]  # mean 2, var 5 - 4 = 1
    for flag, deviates in ((1, True), (0, False)):
        values = np.concatenate([vector, np.array([*extra, flag], dtype=np.uint64)])
        out = decode(as_layout(fleet), values)
        assert out.fleet == [
            {"class": "c", "start_ns": layout["epoch_ns"], "count": 4, "mean": 2.0, "std": 1.0}
        ]
        assert out.windows[0]["deviates_from_fleet"] is deviates
    values = np.concatenate([vector, np.array([*extra, 2], dtype=np.uint64)])
    assert len(values) == n + 3
    with pytest.raises(AnalyticsError, match="not 0/1"):
        decode(as_layout(fleet), values)
