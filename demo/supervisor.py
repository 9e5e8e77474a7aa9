"""A small process supervisor: start children, restart crashes with backoff, stop in order.

Each child runs in its own session (so a terminal's Ctrl-C reaches only the
supervisor, which then stops children in reverse start order: SIGTERM, a grace
period, then SIGKILL). A child that exits while the supervisor runs is
restarted after an exponential backoff (0.5 s doubling to 30 s, reset once it
has stayed up for 30 s). :meth:`Supervisor.kill` lets the chaos soak kill a
child and optionally hold it down for a while before the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cloud_tecc.freeze import freeze_group

log = logging.getLogger("tecc.supervisor")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child process."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    restart: bool = True
    stop_timeout_s: float = 10.0


@dataclass(slots=True)
class ChildState:
    """Live state of a child, as shown in the status line and used by the soak."""

    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    hold_until: float = 0.0
    last_exit: int | None = None
    log_file: IO[bytes] | None = None
    starts: list[float] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Owns a set of child processes for the lifetime of the demo or a soak run."""

    def __init__(
        self,
        log_dir: Path,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 30.0,
    ) -> None:
        self._log_dir = log_dir
        self._initial = backoff_initial_s
        self._max = backoff_max_s
        self._stable = stable_after_s
        self._children: dict[str, ChildState] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def children(self) -> Mapping[str, ChildState]:
        """All children by name, in start order."""
        return self._children

    async def start(self, spec: ChildSpec) -> ChildState:
        """Start ``spec`` and watch it; returns its state."""
        if spec.name in self._children:
            raise ValueError(f"a child named {spec.name!r} is already supervised")
        state = ChildState(spec=spec, backoff_s=self._initial)
        self._children[spec.name] = state
        await self._spawn(state)
        self._watchers[spec.name] = asyncio.create_task(self._watch(state), name=spec.name)
        return state

    async def _spawn(self, state: ChildState) -> None:
        spec = state.spec
        if state.log_file is None:
            state.log_file = (self._log_dir / f"{spec.name}.log").open("ab")
        env = {**os.environ, **spec.env}
        state.process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=state.log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
        )
        state.started_at = time.monotonic()
        state.starts.append(time.time())
        log.info("started %s (pid %d)", spec.name, state.process.pid)

    async def _watch(self, state: ChildState) -> None:
        while not self._stopping:
            assert state.process is not None
            code = await state.process.wait()
            state.last_exit = code
            if self._stopping or not state.spec.restart:
                return
            up_for = time.monotonic() - state.started_at
            if up_for >= self._stable:
                state.backoff_s = self._initial
            delay = max(state.backoff_s, state.hold_until - time.monotonic())
            log.warning(
                "%s exited with %s after %.1f s; restarting in %.1f s",
                state.spec.name,
                code,
                up_for,
                delay,
            )
            await asyncio.sleep(delay)
            state.backoff_s = min(state.backoff_s * 2, self._max)
            if self._stopping:
                return
            state.restarts += 1
            await self._spawn(state)

    def kill(self, name: str, sig: int = signal.SIGKILL, *, hold_s: float = 0.0) -> None:
        """Send ``sig`` to child ``name``; keep it down at least ``hold_s`` seconds."""
        state = self._children[name]
        state.hold_until = time.monotonic() + hold_s
        if state.running:
            assert state.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.process.pid, sig)

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` (e.g. SIGSTOP/SIGCONT) to child ``name`` without restart policy.

        SIGSTOP returns only once every process of the child's group is
        stopped (:func:`cloud_tecc.freeze.freeze_group`; a few ms, blocking).
        A child still not stopped after 5 s (a thread in uninterruptible
        sleep) is logged, not raised: the stop is queued and lands when the
        thread returns, and a long soak goes on.
        """
        state = self._children[name]
        if state.running:
            assert state.process is not None
            with contextlib.suppress(ProcessLookupError):
                if sig != signal.SIGSTOP:
                    os.killpg(state.process.pid, sig)
                    return
                try:
                    freeze_group(state.process.pid)
                except TimeoutError as exc:
                    log.warning("%s: %s", name, exc)

    async def stop(self) -> None:
        """Stop every child in reverse start order and close their logs."""
        self._stopping = True
        for state in reversed(list(self._children.values())):
            await self._stop_one(state)
        for task in self._watchers.values():
            task.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        for state in self._children.values():
            if state.log_file is not None:
                state.log_file.close()

    async def _stop_one(self, state: ChildState) -> None:
        proc = state.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), state.spec.stop_timeout_s)
        except TimeoutError:
            log.warning(
                "%s did not stop in %.0f s; killing", state.spec.name, state.spec.stop_timeout_s
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
