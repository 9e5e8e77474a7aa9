"""A minimal shard worker for the takeover tests: one lease, one fenced commit loop.

Run as ``python -m tests.jetstream.lease_worker --shard 0 --worker-id a --events F``
with ``TECC_TEST_NATS_SERVERS`` (JSON list of client URLs with the credential) in
the environment. Every step is one JSON line in the events file, stamped with
``time.time_ns()`` (all workers of a test run on one host, one clock):

- ``held``: taken just *before* ``lease.held`` returned true, so the lease was
  valid at ``t``; the test checks that no two workers' held instants interleave;
- ``commit`` / ``fenced``: a fenced write to the committed state landed / was refused;
- ``active``, ``stopped``, ``lost``, ``standby``, ``exit``: supervisor transitions.

``--pause-when FILE`` makes the worker SIGSTOP itself once FILE exists, after the
``held`` check and before the commit write: on SIGCONT that write is exactly
the late write of an owner that slept through its lease, and must be refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import IO

from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import TRANSIENT, FencedError, connect
from cloud_tecc.jetstream.lease import Lease
from cloud_tecc.jetstream.standby import run_while_leased


class Events:
    """Append-only JSON lines, flushed at once (a SIGKILL loses nothing written)."""

    def __init__(self, path: Path) -> None:
        self.out: IO[str] = path.open("a", buffering=1)

    def emit(self, ev: str, t: int | None = None, **fields: object) -> None:
        line = {"ev": ev, "t": time.time_ns() if t is None else t, **fields}
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()


async def main(args: argparse.Namespace) -> None:
    events = Events(args.events)
    servers = json.loads(os.environ["TECC_TEST_NATS_SERVERS"])
    nc = await connect(servers)
    js = nc.jetstream()
    committed = await CommittedState.open(js, shard=args.shard, replicas=args.replicas)
    lease = Lease(
        js, shard=args.shard, worker_id=args.worker_id, ttl_s=args.ttl, replicas=args.replicas
    )
    task: asyncio.Task[None] | None = None
    stopping = asyncio.Event()

    async def act() -> None:
        step = 0
        token = lease.token
        while True:
            step += 1
            t = time.time_ns()
            if stopping.is_set() or not lease.held:
                return
            events.emit("held", t=t, token=token, step=step)
            if args.pause_when is not None and args.pause_when.exists():
                args.pause_when.unlink()
                events.emit("pause", step=step)
                os.kill(os.getpid(), signal.SIGSTOP)
                events.emit("resumed", step=step)
            try:
                await committed.commit(
                    fence=token, worker_id=args.worker_id, now_ns=t, watermark_ns=step
                )
                events.emit("commit", token=token, step=step)
            except FencedError as exc:
                events.emit("fenced", token=token, step=step, reason=str(exc))
            except TRANSIENT as exc:
                events.emit("commit-error", token=token, step=step, reason=repr(exc))
            await asyncio.sleep(0.05)

    async def start() -> None:
        nonlocal task
        record = await committed.claim(
            fence=lease.token, worker_id=args.worker_id, now_ns=time.time_ns()
        )
        prev = lease.previous_end_ns
        events.emit(
            "active",
            token=lease.token,
            resumed_from=record.watermark_ns,
            takeover_s=None if prev is None else (time.time_ns() - prev) / 1e9,
        )
        stopping.clear()
        task = asyncio.create_task(act())

    async def stop() -> None:
        # The step under way finishes (its write is fenced); the next one sees held false.
        stopping.set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        events.emit("stopped")

    async with lease:
        lease.on_lost(lambda reason: events.emit("lost", reason=reason))
        events.emit("standby")
        supervisor = asyncio.create_task(run_while_leased(lease, start, stop))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, supervisor.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    events.emit("exit")
    await nc.close()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--ttl", type=int, default=2)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--pause-when", type=Path, default=None)
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
