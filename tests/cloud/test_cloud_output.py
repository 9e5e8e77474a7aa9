"""Output collector: reconstruction only from consistent, policy-conforming shares."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.analytics.release import Decoded, build_release
from cloud_tecc.errors import AnalyticsError
from cloud_tecc.output.collector import try_complete, validate_submission

T0 = 1_700_000_000_000_000_000
POLICY = policy_from_mapping(
    {"window_s": 10, "min_count": 5, "rates": [{"sensor": "*", "max_delta": 1.0}]}
)


def _shares() -> tuple[dict[str, Any], bytes, bytes, Decoded]:
    ts = T0 + np.arange(50, dtype=np.int64) * 100_000_000
    vals = np.sin(np.arange(50) / 3.0) * 4.0
    (res,) = run_reference(POLICY, [StreamReadings("gw", "s", ts, vals)])
    rel = build_release(POLICY, res.epoch, res.output, 16, parties=2)
    mask = np.random.default_rng(3).integers(0, 2**63, rel.vector.size, dtype=np.uint64)
    v0 = mask.astype("<u8").tobytes()
    v1 = (rel.vector - mask).astype("<u8").tobytes()
    return rel.layout, v0, v1, res.released


def test_reconstructs_exactly_what_the_reference_released() -> None:
    """Two consistent submissions reconstruct the reference rows; one alone waits."""
    layout, v0, v1, released = _shares()
    validate_submission(POLICY, as_layout(layout), v0)
    assert try_complete(POLICY, 2, {0: (as_layout(layout), v0)}) is None
    done = try_complete(POLICY, 2, {0: (as_layout(layout), v0), 1: (as_layout(layout), v1)})
    assert done is not None
    assert done.rows == released


def test_refuses_inconsistent_or_excessive_submissions() -> None:
    """Different layouts, wrong lengths, corrupted flags and policy excess are refused."""
    layout, v0, v1, _ = _shares()
    other = {**layout, "epoch_ns": T0 + 1}
    with pytest.raises(AnalyticsError, match="different layouts"):
        try_complete(POLICY, 2, {0: (as_layout(layout), v0), 1: (as_layout(other), v1)})
    with pytest.raises(AnalyticsError, match="length"):
        validate_submission(POLICY, as_layout(layout), v0[:-8])
    bad = bytearray(v1)
    bad[-8] ^= 0x08  # the last word packs rate flags: its first lane reconstructs to ≥ 8
    with pytest.raises(AnalyticsError, match="0/1"):
        try_complete(POLICY, 2, {0: (as_layout(layout), v0), 1: (as_layout(layout), bytes(bad))})
    strict = policy_from_mapping({"window_s": 10, "min_count": 500})
    with pytest.raises(AnalyticsError, match="beyond the policy"):
        validate_submission(strict, as_layout(layout), v0)


def test_refuses_alert_and_deviation_entries_of_withheld_windows() -> None:
    """Alert and fleet-deviation entries need a released window (min_count) and class.

    Fails on the code before this change: the output checked only detector
    names, so an alert of a withheld window (fewer than min_count readings)
    was decoded and stored.
    """
    layout, v0, _, _ = _shares()
    withheld = {"gateway": "gw", "sensor": "few", "count": POLICY.min_count - 1, "fields": []}
    alert = {"gateway": "gw", "sensor": "few", "detector": "rate", "first": 0, "n": 1}
    bad = {
        **layout,
        "windows": [*layout["windows"], withheld],
        "alerts": [*layout["alerts"], alert],
    }
    with pytest.raises(AnalyticsError, match=r"below min_count|no released window"):
        validate_submission(POLICY, as_layout(bad), v0)
    (first,) = [a for a in layout["alerts"] if a["sensor"] == "s"][:1]
    overlong = {**first, "n": first["n"] + 1}
    with pytest.raises(AnalyticsError, match="exceeds its window"):
        validate_submission(POLICY, as_layout({**layout, "alerts": [overlong]}), v0)
    dev = {"gateway": "gw", "sensor": "s", "class": "nowhere"}
    with pytest.raises(AnalyticsError, match=r"released class|beyond the policy"):
        validate_submission(POLICY, as_layout({**layout, "fleet_dev": [dev]}), v0)


def test_refuses_a_layout_for_another_number_of_parties() -> None:
    """A layout split for 1 or 3 parties is refused by a 2-party output service.

    Fails on the code before this change: ``parties`` was never compared with
    the configuration.
    """
    layout, v0, v1, _ = _shares()
    for n in (1, 3):
        other = {**layout, "parties": n}
        with pytest.raises(AnalyticsError, match="parties"):
            validate_submission(POLICY, as_layout(other), v0, n_parties=2)
        with pytest.raises(AnalyticsError, match="parties"):
            try_complete(POLICY, 2, {0: (as_layout(other), v0), 1: (as_layout(other), v1)})


def test_fleet_rows_cover_exactly_the_released_windows() -> None:
    """A fleet class over a withheld window is not stored; fleet minus windows gives nothing back.

    Fails on the code before this change (with the analytics of that code):
    gw-b's single reading (withheld, below min_count) was inside the class
    total, so class Σ − gw-a's released Σ recovered it exactly.
    """
    policy = policy_from_mapping(
        {"window_s": 10, "min_count": 5, "fleet": {"classes": {"temp": ["t*"]}, "k": 2.0}}
    )
    ts = T0 + np.arange(50, dtype=np.int64) * 100_000_000
    streams = [
        StreamReadings("gw-a", "t1", ts, 40.0 + np.sin(np.arange(50.0))),
        StreamReadings("gw-b", "t1", ts[:1], np.array([73.125])),
    ]
    (res,) = run_reference(policy, streams)
    rel = build_release(policy, res.epoch, res.output, 16, parties=2)
    mask = np.random.default_rng(4).integers(0, 2**63, rel.vector.size, dtype=np.uint64)
    v0, v1 = mask.astype("<u8").tobytes(), (rel.vector - mask).astype("<u8").tobytes()
    done = try_complete(policy, 2, {0: (as_layout(rel.layout), v0), 1: (as_layout(rel.layout), v1)})
    assert done is not None
    released = sum(w["count"] for w in done.rows.windows if w.get("mean") is not None)
    assert released == 50
    for f in done.rows.fleet:
        assert f.get("mean") is None or f["count"] == released
    if done.withheld_classes:
        assert done.withheld_classes == ("temp",)
        assert all("deviates_from_fleet" not in w for w in done.rows.windows)
