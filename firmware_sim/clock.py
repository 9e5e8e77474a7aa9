"""The simulated clock: maps simulated epoch seconds to wall-clock deadlines.

Simulated time starts at ``start`` (epoch seconds) when :meth:`SimClock.begin`
is called and advances ``speed`` times faster than the wall clock. Samples are
stamped with simulated time computed from their slot number, never read from
the wall clock, so timestamps are exact and reproducible.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class SimClock:
    """Paces a run: ``sleep_until(t)`` returns when simulated time reaches ``t``."""

    def __init__(
        self,
        start: float,
        *,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.start = start
        self.speed = speed
        self._monotonic = monotonic
        self._origin: float | None = None

    def begin(self) -> None:
        """Anchor simulated ``start`` to the current wall-clock instant."""
        self._origin = self._monotonic()

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
