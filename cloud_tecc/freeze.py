"""Freeze processes for chaos drills, returning only once they are frozen.

``kill(pid, SIGSTOP)`` is asynchronous: it returns when the signal is queued,
and each thread of the target stops only when the kernel next runs it. On a
busy machine the target goes on for a while: measured here under two CPU
burners, nats-server acknowledged a JetStream publish sent just after its
SIGSTOP in 28 of 60 tries, and a process with 16 busy threads still had a
running thread right after ``kill`` returned in 24 of 50. A drill that means
"nothing answers from now on" must therefore wait until every thread of every
target is stopped (state ``T``, or ``t`` when traced) or gone, which is what
:func:`freeze` and :func:`freeze_group` do, polling ``/proc`` (Linux).

SIGCONT needs no wait: the kernel wakes stopped threads while sending it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
#: thread states that count as frozen: stopped, traced-stopped, zombie, dead
_FROZEN = frozenset("TtZX")


def _after_comm(stat_text: str) -> list[str]:
    """The fields of a ``stat`` file from field 3 (state) on.

    The comm field (2) is parenthesised and may hold spaces or ``)``, so the
    fields are split after its last ``)``.
    """
    return stat_text[stat_text.rindex(")") + 2 :].split()


def thread_states(pid: int) -> list[str]:
    """The scheduler state letter of every thread of ``pid`` (empty once it is gone)."""
    out: list[str] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            out.append(_after_comm((task / "stat").read_text())[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited while we looked
    return out


def is_frozen(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (or the process is gone)."""
    return all(s in _FROZEN for s in thread_states(pid))


def group_members(pgid: int) -> list[int]:
    """The pids of process group ``pgid`` (field 5 of ``/proc/<pid>/stat``)."""
    members: list[int] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(_after_comm(text)[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_frozen(pids: Iterable[int], timeout_s: float = 5.0, poll_s: float = 0.001) -> None:
    """Block until every thread of every pid is stopped or gone; TimeoutError after ``timeout_s``.

    A thread in uninterruptible sleep (``D``, e.g. in an fsync) stops when
    the call returns; the timeout bounds that wait.
    """
    waiting = list(pids)
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = [pid for pid in waiting if not is_frozen(pid)]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            states = {pid: "".join(thread_states(pid)) for pid in waiting}
            raise TimeoutError(
                f"SIGSTOP sent but not yet in effect after {timeout_s} s "
                f"(thread states per pid: {states})"
            )
        time.sleep(poll_s)


def freeze(pid: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once all its threads are stopped."""
    os.kill(pid, signal.SIGSTOP)
    wait_frozen([pid], timeout_s)


def freeze_group(pgid: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP process group ``pgid`` and return once every member is stopped.

    A stopped process cannot fork, so the members read after the signal are
    all there will be until SIGCONT.
    """
    os.killpg(pgid, signal.SIGSTOP)
    wait_frozen(group_members(pgid), timeout_s)
