"""The pure parts of ``./tecc replay``: window choice, declared range, option checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from demo.replay import (
    ReplayUsageError,
    build_parser,
    prepare,
    published_spacing,
    value_range,
    window_for,
)
from firmware_sim.errors import ReplayError
from firmware_sim.replay import Recording, ReplayRow, Timing

SAMPLE = Path(__file__).with_name("machine_temp_2013.csv")


def _rec(spacing: float, values: list[float]) -> Recording:
    return Recording([ReplayRow(1_386_000_000 + k * spacing, v) for k, v in enumerate(values)])


def test_window_holds_about_24_readings_at_the_published_spacing() -> None:
    """5-minute history: 2 h windows; respaced to 10 ms: 1 s; compressed by 30,000: 1 s."""
    rec = _rec(300.0, [1.0] * 50)
    assert window_for(published_spacing(rec, Timing.RECORDED, math.inf, None)) == 7200
    assert window_for(published_spacing(rec, Timing.RESPACE, 1.0, 0.01)) == 1
    assert window_for(published_spacing(rec, Timing.REBASE, 30_000.0, None)) == 1
    assert window_for(published_spacing(rec, Timing.REBASE, 100.0, None)) == 120
    assert window_for(1e6) == 86400


def test_declared_range_pads_the_data_and_refuses_what_the_ring_cannot_hold() -> None:
    """Data span plus 10 % (at least 1 unit); |x| >= 2^bits is refused with the remedy."""
    assert value_range(_rec(1.0, [10.0, 20.0]), None, 4096.0) == (9.0, 21.0)
    assert value_range(_rec(1.0, [5.0, 5.0]), None, 4096.0) == (4.0, 6.0)
    assert value_range(_rec(1.0, [5.0]), [0.0, 100.0], 4096.0) == (0.0, 100.0)
    with pytest.raises(ReplayUsageError, match="values reach 5000: a declared range holds"):
        value_range(_rec(1.0, [5000.0]), None, 4096.0)


def test_prepare_checks_before_starting_and_writes_the_policy(tmp_path: Path) -> None:
    """Bad sensor id and transport are refused; a good call writes the replay policy."""
    parser = build_parser()
    state = ["--state", str(tmp_path)]
    with pytest.raises(ReplayUsageError, match=r"--sensor must be <line>\.<machine>\.<sensor>"):
        prepare(parser.parse_args([str(SAMPLE), "--sensor", "temp", *state]))
    with pytest.raises(ReplayUsageError, match="publishes over MQTT"):
        prepare(parser.parse_args([str(SAMPLE), "--sensor", "a.b.c", "--transport", "opcua"]))
    args = parser.parse_args([str(SAMPLE), "--sensor", "a.b.c", "--on-disorder", "keep", *state])
    rec, timing, feed, policy = prepare(args)
    assert (len(rec.rows), timing, feed.backfill, feed.speed) == (
        421,
        Timing.RECORDED,
        True,
        math.inf,
    )
    assert "window_s: 7200.0" in policy.read_text()
    args = parser.parse_args([str(SAMPLE), "--sensor", "a.b.c", "--respace", "0.01", *state])
    with pytest.raises(ReplayError, match="goes backwards"):
        prepare(args)
