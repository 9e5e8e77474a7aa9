"""The simulated clock: wall-anchored for live runs, start-anchored otherwise."""

from __future__ import annotations

from firmware_sim.clock import SYNC_WINDOW_S, SimClock


class _Clocks:
    """A fake monotonic and wall clock that advance together."""

    def __init__(self, wall: float) -> None:
        self.mono, self.wall = 100.0, wall

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


def _clock(start: float, c: _Clocks, speed: float = 1.0) -> SimClock:
    return SimClock(start, speed=speed, monotonic=lambda: c.mono, wall=lambda: c.wall)


def test_live_run_started_late_catches_up_to_the_wall_clock() -> None:
    """Begun 2.5 s after its start: simulated time equals the time of day, missed slots due."""
    c = _Clocks(wall=1_800_000_002.5)
    clock = _clock(1_800_000_000.0, c)
    clock.begin()
    assert clock.now() == c.wall
    assert clock.delay_until(1_800_000_001.0) < 0  # a slot missed during start-up: due now
    c.advance(1.0)
    assert clock.now() == c.wall
    assert clock.delay_until(c.wall + 0.5) == 0.5


def test_future_start_is_waited_for() -> None:
    """A start 3 s ahead is reached 3 s later, not at once."""
    c = _Clocks(wall=1_800_000_000.0)
    clock = _clock(1_800_000_003.0, c)
    clock.begin()
    assert clock.delay_until(clock.start) == 3.0


def test_history_and_fast_runs_anchor_at_begin() -> None:
    """Far from the present, or faster than real time: simulated start = the moment of begin."""
    c = _Clocks(wall=1_800_000_000.0)
    old = _clock(1_800_000_000.0 - 2 * SYNC_WINDOW_S, c)
    old.begin()
    assert old.now() == old.start
    fast = _clock(1_800_000_000.0 - 2.0, c, speed=10.0)
    fast.begin()
    c.advance(1.0)
    assert fast.now() == fast.start + 10.0
