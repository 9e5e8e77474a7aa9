"""The simulated clock: maps simulated epoch seconds to wall-clock deadlines.

Simulated time starts at ``start`` (epoch seconds) when :meth:`SimClock.begin`
is called and advances ``speed`` times faster than the wall clock. Samples are
stamped with simulated time computed from their slot number, never read from
the wall clock, so timestamps are exact and reproducible.

A live run (speed 1, ``start`` within ``SYNC_WINDOW_S`` of the present) is
anchored to the wall clock instead, like sensors with synchronised clocks:
simulated time *is* the time of day, a future ``start`` is waited for, and the
slots that fell due while the servers were starting are published at once.
Otherwise every reading would carry a timestamp as old as the simulator's
start-up time, a clock skew real plants keep far below a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Final

SYNC_WINDOW_S: Final = 300.0


class SimClock:
    """Paces a run: ``sleep_until(t)`` returns when simulated time reaches ``t``."""

    def __init__(
        self,
        start: float,
        *,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.start = start
        self.speed = speed
        self._monotonic = monotonic
        self._wall = wall
        self._origin: float | None = None

    def begin(self) -> None:
        """Anchor simulated ``start``: to the wall clock for a live run, else to now."""
        self._origin = self._monotonic()
        behind = self._wall() - self.start
        if self.speed == 1.0 and abs(behind) <= SYNC_WINDOW_S:
            self._origin -= behind

    def now(self) -> float:
        """Current simulated time in epoch seconds."""
        if self._origin is None:
            return self.start
        return self.start + (self._monotonic() - self._origin) * self.speed

    def delay_until(self, t: float) -> float:
        """Wall seconds until simulated time ``t`` (<= 0 when already due)."""
        if self._origin is None:
            self.begin()
        assert self._origin is not None
        if math.isinf(self.speed):
            return 0.0
        return self._origin + (t - self.start) / self.speed - self._monotonic()

    async def sleep_until(self, t: float) -> None:
        """Sleep until simulated ``t``; always yields to the event loop at least once."""
        await asyncio.sleep(max(0.0, self.delay_until(t)))
