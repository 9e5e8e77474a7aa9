"""Stopping asyncio tasks whose cancellation can be lost.

On Python 3.11 ``asyncio.wait_for`` returns the inner result, and drops the
cancellation, when the awaited future completes in the same loop iteration as
the cancel (fixed in 3.12). nats-py waits for every message that way, so a
consumer loop cancelled just as a message or a pull's status arrives keeps
running, and one ``cancel()`` followed by ``gather`` waits for ever (seen once:
a share consumer still fetching 16 minutes after its cancel). Loops call
:func:`check_cancelled` at the top of each turn; stoppers use :func:`cancel_and_wait`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Final

log = logging.getLogger(__name__)
#: How long a stopper waits after a cancel before cancelling again.
RECANCEL_S: Final = 0.5


def check_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request got lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel every task and wait until all have ended, cancelling again any that go on."""
    pending = {t for t in tasks if not t.done()}
    rounds = 0
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        rounds += 1
        if pending and rounds == 1:
            log.warning(
                "%d task(s) still running %.1f s after their cancel (%s); cancelling again",
                len(pending),
                RECANCEL_S,
                ", ".join(sorted(t.get_name() for t in pending)),
            )
