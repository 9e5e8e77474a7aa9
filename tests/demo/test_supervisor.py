"""The supervisor restarts crashed children with backoff and stops them cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from demo.services import free_port, mosquitto_spec, wait_for_port
from demo.supervisor import ChildSpec, Supervisor

SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")


async def _until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(10.0):
        while not cond():
            await asyncio.sleep(0.02)


async def test_crashed_child_is_restarted_with_backoff(tmp_path: Path) -> None:
    """A killed child comes back; consecutive crashes wait longer each time."""
    sup = Supervisor(tmp_path, backoff_initial_s=0.1, backoff_max_s=1.0)
    state = await sup.start(ChildSpec("sleeper", SLEEPER))
    first_pid = state.process.pid if state.process else 0
    sup.kill("sleeper")
    await _until(lambda: state.restarts == 1 and state.running)
    assert state.process is not None
    assert state.process.pid != first_pid
    assert state.last_exit == -signal.SIGKILL
    sup.kill("sleeper")
    await _until(lambda: state.restarts == 2 and state.running)
    gap1 = state.starts[1] - state.starts[0]
    gap2 = state.starts[2] - state.starts[1]
    assert gap2 > gap1  # exponential backoff, not a restart loop
    await sup.stop()
    assert not state.running


async def test_hold_keeps_a_child_down(tmp_path: Path) -> None:
    """kill(hold_s=…) delays the restart by at least the hold."""
    sup = Supervisor(tmp_path, backoff_initial_s=0.05)
    state = await sup.start(ChildSpec("sleeper", SLEEPER))
    sup.kill("sleeper", hold_s=0.6)
    await _until(lambda: state.last_exit == -signal.SIGKILL)  # it did go down
    await _until(lambda: state.running and len(state.starts) == 2)
    assert state.starts[1] - state.starts[0] >= 0.6
    await sup.stop()


async def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    """A child that ignores SIGTERM is killed after its stop timeout."""
    ready = tmp_path / "handler-installed"
    stubborn = (
        sys.executable,
        "-c",
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(600)",
        str(ready),
    )
    sup = Supervisor(tmp_path)
    state = await sup.start(ChildSpec("stubborn", stubborn, stop_timeout_s=0.5))
    await _until(ready.exists)  # its SIGTERM handler is installed
    await sup.stop()
    assert state.process is not None
    assert state.process.returncode == -signal.SIGKILL


@pytest.mark.mqtt
async def test_mosquitto_child_serves(tmp_path: Path) -> None:
    """The broker spec starts a real mosquitto that accepts connections."""
    port = free_port()
    sup = Supervisor(tmp_path / "logs")
    await sup.start(mosquitto_spec(tmp_path / "mqtt", port))
    await asyncio.to_thread(wait_for_port, port)
    await sup.stop()
    assert "listener" in (tmp_path / "mqtt" / "mosquitto.conf").read_text()
