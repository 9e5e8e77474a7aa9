"""The release layout decoded once into Structs, wire format unchanged, checked once per epoch."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import numpy as np
import pytest

import cloud_tecc.analytics.release as release_mod
import cloud_tecc.output.collector as collector_mod
from cloud_tecc.analytics.layout import ReleaseLayout, as_layout, layout_doc
from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.analytics.release import build_release
from cloud_tecc.errors import AnalyticsError
from cloud_tecc.output.collector import (
    LayoutChecks,
    decode_result,
    try_complete,
    validate_submission,
)
from tecc_contract.scale import Scale

T0 = 1_700_000_000_000_000_000
POLICY = policy_from_mapping(
    {
        "window_s": 10,
        "min_count": 5,
        "rates": [{"sensor": "*", "max_delta": 1.0}],
        "fleet": {"classes": {"speed": ["*.spindle"]}, "k": 3.0, "min_sigma": 1.0},
    }
)


def _party_release() -> tuple[dict[str, Any], bytes, bytes]:
    """A two-party release with windows, alerts, scales, a fleet class and deviation flags."""
    scale = Scale.for_range(0.0, 24_000.0, 12)
    ts = T0 + np.arange(60, dtype=np.int64) * 100_000_000
    rng = np.random.default_rng(5)
    streams = [
        StreamReadings(gw, "m.spindle", ts, 9_000 + rng.normal(0, 30, 60), scale)
        for gw in ("gw-a", "gw-b")
    ]
    (res,) = run_reference(POLICY, streams)
    rel = build_release(POLICY, res.epoch, res.output, 16, parties=2)
    mask = np.random.default_rng(3).integers(0, 2**63, rel.vector.size, dtype=np.uint64)
    v0 = mask.astype("<u8").tobytes()
    v1 = (rel.vector - mask).astype("<u8").tobytes()
    return {**rel.layout, "run": "r1"}, v0, v1


def _message(layout: dict[str, Any], vector: bytes, party: int) -> bytes:
    """The result message body a party sends (the coordinator's shape)."""
    body = {
        "party": party,
        "shard": 0,
        "seq": 1,
        "layout": layout,
        "vector": base64.b64encode(vector).decode(),
    }
    return json.dumps(body).encode()


def test_a_party_layout_decodes_and_encodes_back_to_the_same_json() -> None:
    """The wire keys (``n``, ``ts``, ``class``, ``fleet_dev``) are kept: decode, encode, equal."""
    layout, v0, _ = _party_release()
    assert layout["fleet_dev"]
    assert layout["alerts"]
    assert "scale" in layout["windows"][0]
    msg = decode_result(_message(layout, v0, 0))
    assert isinstance(msg.layout, ReleaseLayout)
    assert layout_doc(msg.layout) == layout
    assert msg.layout.fleet_deviates[0].fleet_class == "speed"
    assert msg.layout.alerts[0].count == layout["alerts"][0]["n"]
    assert msg.layout.windows[0].timestamps == layout["windows"][0].get("ts")
    stored = json.loads(json.dumps(layout_doc(msg.layout), sort_keys=True))
    assert as_layout(stored) == msg.layout  # the output's SQLite row reads back equal


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("windows", 0, "extra"), 1, "`$.layout.windows[0]`"),
        (("windows", 0, "count"), True, "`$.layout.windows[0].count`"),
        (("alerts", 0, "n"), -1, "`$.layout.alerts[0].n`"),
        (("fleet_dev", 0, "class"), 7, "`$.layout.fleet_dev[0].class`"),
        (("parties",), "2", "`$.layout.parties`"),
    ],
)
def test_a_malformed_layout_is_refused_at_the_boundary_naming_the_field(
    path: tuple[Any, ...], value: object, where: str
) -> None:
    """Unknown keys, bool for int, negative counts, wrong types: refused with the wire path."""
    layout, v0, _ = _party_release()
    bad = json.loads(json.dumps(layout))
    node = bad
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(ValueError, match="result message") as info:
        decode_result(_message(bad, v0, 0))
    assert where in str(info.value)
    with pytest.raises(AnalyticsError, match="malformed release layout"):
        as_layout(bad)


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"check_layout": 0, "expected_length": 0}
    for name in calls:
        real = getattr(release_mod, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(release_mod, name, counted)
        monkeypatch.setattr(collector_mod, name, counted)
    return calls


def _one_epoch(
    policy: AnalyticsPolicy, checks: LayoutChecks, release: tuple[dict[str, Any], bytes, bytes]
) -> None:
    """What the output service does for one epoch: two submissions, then completion."""
    layout, v0, v1 = release
    pending: dict[int, tuple[ReleaseLayout, bytes]] = {}
    for party, vec in ((0, v0), (1, v1)):
        msg = decode_result(_message(layout, vec, party))  # the boundary: one decode each
        validate_submission(policy, msg.layout, msg.shares(), n_parties=2, checks=checks)
        pending[party] = (msg.layout, msg.shares())
        done = try_complete(policy, 2, dict(pending), checks=checks)
    assert done is not None
    assert done.rows.fleet
    assert done.rows.alerts


def test_an_epoch_of_two_parties_checks_its_layout_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_layout and expected_length run once per epoch, not 3 and 4 times.

    Fails on the code before this change: there every submission and the
    completion re-checked the layout (check_layout 3 times, expected_length 4
    times for two parties).
    """
    release = _party_release()  # the reference run decodes its own release: not counted
    calls = _counting(monkeypatch)
    _one_epoch(POLICY, LayoutChecks(POLICY, 2), release)
    assert calls == {"check_layout": 1, "expected_length": 1}


def test_a_layout_beyond_the_policy_is_refused_every_time_and_not_remembered() -> None:
    """A failed check is not cached: the same bad layout is refused again."""
    layout, v0, _ = _party_release()
    strict = policy_from_mapping({"window_s": 10, "min_count": 500})
    checks = LayoutChecks(strict, 2)
    for _ in range(2):
        with pytest.raises(AnalyticsError, match="beyond the policy"):
            validate_submission(strict, as_layout(layout), v0, checks=checks)


def test_the_memory_of_passed_layouts_is_bounded() -> None:
    """Distinct layouts beyond ``capacity`` push the oldest out (outside input cannot grow it)."""
    layout, _, _ = _party_release()
    checks = LayoutChecks(POLICY, 2, capacity=3)
    seen = [as_layout({**layout, "epoch_ns": T0 + k}) for k in range(5)]
    for lay in seen:
        checks.length(lay)
    assert list(checks._passed) == seen[2:]
    assert msgspec.structs.asdict(seen[0])["epoch_ns"] == T0
