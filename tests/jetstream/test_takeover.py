"""Standby takeover between two worker processes of one shard, on a real nats-server.

Each worker (tests/jetstream/lease_worker.py) stamps every instant at which its
lease was valid and every fenced commit; the tests check from those files that
the two workers' owned instants never interleave, and from the KV record that
the newest owner's token fences every late write.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud_tecc.freeze import freeze
from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import LEASES_BUCKET, TRANSIENT, connect
from cloud_tecc.jetstream.server import NatsDeployment, start_cluster, start_node

pytestmark = [pytest.mark.processes, pytest.mark.slow]

TTL_S = 2
RENEW_S = TTL_S / 3
#: Poll interval of a standby (0.2 s) plus interpreter scheduling on a busy machine.
SLACK_S = 1.5

Event = dict[str, Any]


@dataclass
class Worker:
    """One lease_worker process and its events file."""

    name: str
    events_path: Path
    process: subprocess.Popen[bytes]

    def events(self, kind: str | None = None) -> list[Event]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        parsed = [json.loads(line) for line in lines if line.endswith("}")]
        return [e for e in parsed if kind is None or e["ev"] == kind]

    def first(self, kind: str) -> Event:
        found = self.events(kind)
        assert found, f"{self.name} has no {kind!r} event: {self.events()[-5:]}"
        return found[0]


def spawn(dep: NatsDeployment, tmp: Path, name: str, *args: str) -> Worker:
    env = {**os.environ, "TECC_TEST_NATS_SERVERS": json.dumps(dep.servers)}
    path = tmp / f"{name}.events"
    with (tmp / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.jetstream.lease_worker",
                "--worker-id",
                name,
                "--events",
                str(path),
                "--ttl",
                str(TTL_S),
                "--replicas",
                str(dep.replicas),
                *args,  # a later --ttl wins
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Worker(name, path, proc)


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.process.poll() is None:
            w.process.send_signal(signal.SIGCONT)
            w.process.kill()
        w.process.wait(timeout=10)


def assert_never_both_held(*workers: Worker) -> int:
    """Each term (token) is one worker's; terms follow each other without overlap.

    Every instant a worker held the lease (its ``held`` stamps) lies within its
    term, and every stamp of a term precedes every stamp of the next term.
    Returns the number of terms seen.
    """
    terms: dict[int, tuple[str, list[int]]] = {}
    for w in workers:
        for e in w.events("held"):
            owner, stamps = terms.setdefault(e["token"], (w.name, []))
            assert owner == w.name, f"token {e['token']} held by {owner} and {w.name}"
            stamps.append(e["t"])
    ordered = [terms[token][1] for token in sorted(terms)]
    for earlier, later in itertools.pairwise(ordered):
        assert max(earlier) < min(later), (max(earlier) - min(later)) / 1e9
    return len(ordered)


async def final_record(dep: NatsDeployment) -> tuple[str, int]:
    nc = await connect(dep.servers)
    try:
        state = await CommittedState.open(nc.jetstream(), shard=0, replicas=dep.replicas)
        record = await state.load()
    finally:
        await nc.close()
    assert record is not None
    return record.worker_id, record.fence


def start_pair(
    dep: NatsDeployment, tmp: Path, workers: list[Worker], *owner_args: str
) -> tuple[Worker, Worker]:
    owner = spawn(dep, tmp, "a", *owner_args)
    workers.append(owner)
    wait_until("a active", lambda: bool(owner.events("active")))
    standby = spawn(dep, tmp, "b")
    workers.append(standby)
    wait_until("b standby", lambda: bool(standby.events("standby")))
    time.sleep(TTL_S)  # a live owner keeps it: the standby stays standby
    assert not standby.events("active")
    return owner, standby


def test_sigkilled_owner_is_replaced_within_ttl_and_renewal(
    tmp_path: Path, workers: list[Worker]
) -> None:
    with start_node(tmp_path / "nats") as dep:
        owner, standby = start_pair(dep, tmp_path, workers)
        killed_ns = time.time_ns()
        owner.process.kill()
        wait_until("b active", lambda: bool(standby.events("active")))
        wait_until("b commits", lambda: bool(standby.events("commit")))
        active = standby.first("active")
        took_s = (active["t"] - killed_ns) / 1e9
        assert took_s <= TTL_S + RENEW_S + SLACK_S, took_s
        assert active["token"] > owner.first("active")["token"]
        # The standby resumes from the last commit that landed: every commit the owner
        # saw acknowledged, and at most the step it was writing when killed (the kill
        # can fall between the write landing and its "commit" line being written).
        acknowledged = max(e["step"] for e in owner.events("commit"))
        attempted = max(e["step"] for e in owner.events("held"))
        assert acknowledged <= active["resumed_from"] <= attempted, (
            acknowledged,
            active["resumed_from"],
            attempted,
        )
        assert active["takeover_s"] is not None
        assert assert_never_both_held(owner, standby) == 2
        assert asyncio.run(final_record(dep)) == ("b", active["token"])


@pytest.mark.parametrize("where", ["between-steps", "before-commit"])
def test_sigstopped_owner_notices_the_loss_and_its_late_commit_is_fenced(
    tmp_path: Path, workers: list[Worker], where: str
) -> None:
    """SIGSTOP past the TTL: the standby takes over; on SIGCONT the old owner stands down.

    ``before-commit``: the owner stops itself between its held check and its commit
    write, so on SIGCONT that write is sent by an owner whose lease is gone; the
    committed state refuses it. ``between-steps``: the test stops it at a random point.
    """
    with start_node(tmp_path / "nats") as dep:
        flag = tmp_path / "pause"
        args = ("--pause-when", str(flag)) if where == "before-commit" else ()
        owner, standby = start_pair(dep, tmp_path, workers, *args)
        if where == "before-commit":
            flag.touch()
            wait_until("a paused", lambda: bool(owner.events("pause")))
        else:
            freeze(owner.process.pid)
        wait_until("b active", lambda: bool(standby.events("active")))
        wait_until("b commits", lambda: len(standby.events("commit")) >= 3)
        owner.process.send_signal(signal.SIGCONT)
        wait_until("a stopped", lambda: bool(owner.events("stopped")))
        lost = owner.first("lost")
        assert "overdue" in lost["reason"] or "revision changed" in lost["reason"]
        token_b = standby.first("active")["token"]
        if where == "before-commit":
            paused = owner.first("pause")["step"]
            fenced = owner.first("fenced")
            assert fenced["step"] == paused
            assert f"newer token {token_b}" in fenced["reason"]
            assert all(e["step"] < paused for e in owner.events("commit"))
        assert assert_never_both_held(owner, standby) == 2
        assert owner.process.poll() is None  # back to standby, not crashed
        assert asyncio.run(final_record(dep)) == ("b", token_b)


def test_sigterm_releases_so_the_standby_need_not_wait_for_the_ttl(
    tmp_path: Path, workers: list[Worker]
) -> None:
    with start_node(tmp_path / "nats") as dep:
        owner, standby = start_pair(dep, tmp_path, workers, "--ttl", "60")
        owner.process.terminate()
        assert owner.process.wait(timeout=10) == 0
        assert owner.events("exit")
        # With a 60 s TTL only the release can hand over within the wait below.
        wait_until("b active", lambda: bool(standby.events("active")), timeout_s=20)
        assert standby.first("active")["takeover_s"] is not None
        assert assert_never_both_held(owner, standby) == 2


async def kv_leader(dep: NatsDeployment) -> str:
    """The lease bucket's stream leader (retried while the meta leader is elected)."""
    nc = await connect(dep.servers)
    try:
        for _ in range(60):
            try:
                info = await asyncio.wait_for(nc.jetstream().stream_info(f"KV_{LEASES_BUCKET}"), 2)
            except TRANSIENT:
                await asyncio.sleep(0.5)
                continue
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
    raise AssertionError("the lease bucket has no leader")


def test_r3_cluster_survives_the_kv_leader_node_kill(tmp_path: Path, workers: list[Worker]) -> None:
    """Killing the lease bucket's stream leader: one owner before, during and after.

    A killed leader is replaced by a Raft election that takes several seconds
    (longer than this 2 s TTL), so the owner may stand down meanwhile; the lease
    must then be taken again once the new leader serves, never by two at once,
    and the R=3 commits continue.
    """
    with start_cluster(tmp_path / "nats") as dep:
        owner, standby = start_pair(dep, tmp_path, workers)
        leader = asyncio.run(kv_leader(dep))
        node = next(n for n in dep.nodes if n.spec.name == leader)
        commits_before = len(owner.events("commit")) + len(standby.events("commit"))
        node.kill()
        killed_ns = time.time_ns()

        def committing_again() -> bool:
            after = [e for w in (owner, standby) for e in w.events("commit") if e["t"] > killed_ns]
            return len(after) >= 5

        wait_until("commits after the leader kill", committing_again, timeout_s=40)
        assert len(owner.events("commit")) + len(standby.events("commit")) > commits_before
        assert asyncio.run(kv_leader(dep)) != leader
        terms = assert_never_both_held(owner, standby)
        assert terms >= 1
