"""A wait that loses its cancel, as nats-py's ``wait_for`` does on Python 3.11."""

from __future__ import annotations

import asyncio
import contextlib


async def swallow_cancel(seconds: float = 0.01) -> None:
    """Sleep; a cancel that lands here is dropped, as when the awaited reply met it."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(seconds)
