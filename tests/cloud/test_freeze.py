"""SIGSTOP drills return only once the target is frozen (:mod:`cloud_tecc.freeze`).

The child processes here keep many threads busy on few cores, so that after
a bare ``kill(SIGSTOP)`` some thread is still runnable: that is the case in
which a frozen nats-server still acknowledged a publish and a chaos test
passed or failed by chance.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_tecc.freeze import freeze, freeze_group, group_members, thread_states, wait_frozen
from cloud_tecc.jetstream.server import NatsNode, NodeSpec
from demo.supervisor import ChildSpec, Supervisor

THREADS = 16
SPINNER = f"""
import threading, time
def spin():
    while True:
        pass
for _ in range({THREADS}):
    threading.Thread(target=spin, daemon=True).start()
time.sleep(600)
"""
#: a spinner that also starts a spinning grandchild in its process group
FAMILY = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", {SPINNER!r}])
exec({SPINNER!r})
"""


def _wait_threads(pid: int, n: int) -> None:
    deadline = time.monotonic() + 20
    while len(thread_states(pid)) < n:
        assert time.monotonic() < deadline, f"pid {pid} did not start its threads"
        time.sleep(0.02)


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", SPINNER])
    try:
        _wait_threads(proc.pid, THREADS + 1)
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _stopped(pid: int) -> bool:
    states = thread_states(pid)
    return bool(states) and all(s in "Tt" for s in states)


def test_a_bare_sigstop_returns_before_the_target_is_stopped(
    spinner: subprocess.Popen[bytes],
) -> None:
    """The premise: right after kill(SIGSTOP) some thread still runs, at least once in 50."""
    running_after = 0
    for _ in range(50):
        os.kill(spinner.pid, signal.SIGSTOP)
        running_after += not _stopped(spinner.pid)
        wait_frozen([spinner.pid])
        os.kill(spinner.pid, signal.SIGCONT)
        time.sleep(0.01)
    assert running_after > 0


def test_freeze_returns_with_every_thread_stopped(spinner: subprocess.Popen[bytes]) -> None:
    """After freeze() each of the 17 threads is in state T, every time."""
    for _ in range(50):
        freeze(spinner.pid)
        assert _stopped(spinner.pid), thread_states(spinner.pid)
        os.kill(spinner.pid, signal.SIGCONT)
        time.sleep(0.01)


def test_freeze_group_stops_the_child_and_its_children() -> None:
    """A supervised child's whole process group is frozen when freeze_group returns."""
    proc = subprocess.Popen([sys.executable, "-c", FAMILY], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(group_members(proc.pid)) < 2:
            assert time.monotonic() < deadline, "the grandchild did not start"
            time.sleep(0.02)
        members = group_members(proc.pid)
        for pid in members:
            _wait_threads(pid, THREADS + 1)
        for _ in range(20):
            freeze_group(proc.pid)
            assert all(_stopped(pid) for pid in members), {
                pid: thread_states(pid) for pid in members
            }
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_wait_frozen_names_the_threads_that_still_run(spinner: subprocess.Popen[bytes]) -> None:
    """A process that was never stopped: TimeoutError with its thread states, no hang."""
    with pytest.raises(TimeoutError, match=rf"{spinner.pid}: '[RS]+"):
        wait_frozen([spinner.pid], timeout_s=0.05)


def test_a_gone_process_counts_as_frozen() -> None:
    """A pid that has exited (and was reaped) does not hold the wait."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    wait_frozen([proc.pid], timeout_s=0.05)


def test_nats_node_sigstop_returns_frozen(tmp_path: Path, spinner: subprocess.Popen[bytes]) -> None:
    """NatsNode.signal(SIGSTOP), used by the JetStream chaos tests, waits for the freeze."""
    spec = NodeSpec("n0", "127.0.0.1", 1, 2, tmp_path, "pw")
    node = NatsNode(spec, tmp_path / "c", tmp_path / "l", process=spinner)
    for _ in range(20):
        node.signal(signal.SIGSTOP)
        assert _stopped(spinner.pid), thread_states(spinner.pid)
        node.signal(signal.SIGCONT)
        time.sleep(0.01)


async def test_supervisor_sigstop_returns_frozen(tmp_path: Path) -> None:
    """Supervisor.signal(SIGSTOP), used by the soak, waits for the child's group to freeze."""
    sup = Supervisor(tmp_path)
    state = await sup.start(ChildSpec("spinner", (sys.executable, "-c", SPINNER)))
    try:
        assert state.process is not None
        pid = state.process.pid
        await asyncio.to_thread(_wait_threads, pid, THREADS + 1)
        for _ in range(20):
            sup.signal("spinner", signal.SIGSTOP)
            assert _stopped(pid), thread_states(pid)
            sup.signal("spinner", signal.SIGCONT)
            await asyncio.sleep(0.01)
    finally:
        await sup.stop()


async def test_supervisor_logs_a_freeze_that_does_not_land_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A child not stopped within the bound (uninterruptible sleep) is a warning, not a crash."""

    def slow(pgid: int) -> None:
        os.killpg(pgid, signal.SIGSTOP)
        raise TimeoutError("SIGSTOP sent but not yet in effect after 5.0 s (thread states: D)")

    monkeypatch.setattr("demo.supervisor.freeze_group", slow)
    sup = Supervisor(tmp_path)
    state = await sup.start(
        ChildSpec("sleeper", (sys.executable, "-c", "import time; time.sleep(600)"))
    )
    try:
        with caplog.at_level("WARNING", logger="tecc.supervisor"):
            sup.signal("sleeper", signal.SIGSTOP)
        assert "sleeper: SIGSTOP sent but not yet in effect" in caplog.text
        assert state.running
    finally:
        sup.signal("sleeper", signal.SIGCONT)
        await sup.stop()
