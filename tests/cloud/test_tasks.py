"""Stopping tasks whose cancel was lost (``cloud_tecc.tasks``; Python 3.11's wait_for race)."""

from __future__ import annotations

import asyncio

import pytest

from cloud_tecc.tasks import cancel_and_wait, check_cancelled


async def _loses_first_cancel(turns: list[int], *, check: bool) -> None:
    """A consumer loop whose first cancel is swallowed, as nats-py's wait_for can on 3.11."""
    lost = False
    while True:
        if check:
            check_cancelled()
        turns.append(1)
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost:
                raise
            lost = True  # swallowed, the way a wait_for that just got its result does


async def _cancelled_once(
    turns: list[int], *, check: bool, wait_s: float
) -> tuple[asyncio.Task[None], set[asyncio.Task[None]]]:
    """Start the loop, cancel it once, wait ``wait_s``: the task and whether it ended."""
    task = asyncio.create_task(_loses_first_cancel(turns, check=check))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=wait_s)
    return task, done


async def test_a_loop_that_checks_ends_after_its_lost_cancel() -> None:
    """Fails without ``check_cancelled``: the loop runs on after the one cancel."""
    task, done = await _cancelled_once([], check=True, wait_s=1.0)
    assert done == {task}
    assert task.cancelled()


async def test_a_loop_that_does_not_check_runs_on_after_one_cancel() -> None:
    """The defect itself (so the test above can fail): one cancel, the task goes on."""
    turns: list[int] = []
    task, done = await _cancelled_once(turns, check=False, wait_s=0.3)
    assert done == set()
    before = len(turns)
    await asyncio.sleep(0.05)
    assert len(turns) > before  # still looping
    await cancel_and_wait([task])  # the stopper's repeat ends it
    assert task.cancelled()


async def test_cancel_and_wait_repeats_the_cancel_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    turns: list[int] = []
    tasks = [asyncio.create_task(_loses_first_cancel(turns, check=False), name=f"c{i}")
             for i in range(2)]  # fmt: skip
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait(tasks), 5)
    assert all(t.cancelled() for t in tasks)
    assert "still running" in caplog.text
    assert "c0, c1" in caplog.text
