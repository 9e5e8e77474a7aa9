"""A standby follows its shard's share log; the term after a takeover reads only the rest.

Real nats-server, real SQLite store and group writer. Fails on the code before
this change: a term's consumer always read the shard from the start of the stream
(``LogFeed.run`` had no start sequence, and there was no follower), so a new owner
re-read the whole history before its first epoch could close.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from cloud_tecc.analytics.plan import StreamState
from cloud_tecc.config import JetStreamConfig
from cloud_tecc.jetstream import epochlog
from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.server import start_node
from cloud_tecc.jetstream.sharelog import ShareLog
from cloud_tecc.party import follower as follower_mod
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.follower import EpochFollower, LogFollower, epoch_rows
from cloud_tecc.party.logfeed import LogFeed
from cloud_tecc.party.store import BatchRow, SegmentRow, ShareStore
from cloud_tecc.party.writer import GroupWriter
from tecc_contract.scale import Scale
from tests.cloud.test_cloud_agreement import _coordinators

GW = "gw-1"


def _row(seq: int) -> BatchRow:
    now = time.time_ns()
    ts = np.arange(now, now + 5, dtype="<i8")
    x = np.arange(5, dtype="<u8") * np.uint64(seq + 1)
    seg = SegmentRow(3, "temp", ts.tobytes(), x.tobytes(), None, Scale(-4))
    digest = seq.to_bytes(32, "big")
    return BatchRow(GW, seq, digest, now, 5, int(ts[0]), int(ts[-1]), False, (seg,))


class FlakyWriter(GroupWriter):
    """A group writer whose first insert of batch ``fail_seq`` fails (a full disk, say)."""

    def __init__(self, store: ShareStore, fail_seq: int) -> None:
        super().__init__(store)
        self.fail_seq, self.failed = fail_seq, 0

    async def submit(self, row: BatchRow) -> str:
        if row.seq == self.fail_seq and not self.failed:
            self.failed += 1
            raise OSError("disk full")
        return await super().submit(row)


@dataclass
class Worker:
    """One worker's store, writer, feed and follower of shard 0."""

    tmp_path: Path
    cfg: JetStreamConfig
    fail_seq: int = -1
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stored: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = ShareStore(self.tmp_path / "shares.db")
        self.writer = FlakyWriter(self.store, self.fail_seq)
        self.feed = LogFeed(
            cfg=self.cfg,
            state_dir=self.tmp_path,
            shard=0,
            service_id="party0",
            store=self.store,
            writer=self.writer,
            tracker=ProgressTracker([GW], started_ns=time.time_ns(), active_ns=60 * 10**9),
            keys={GW: Ed25519PrivateKey.generate().public_key()},
            stored=lambda row, outcome: self.stored.append((row.seq, outcome)),
            registry=self.registry,
        )
        self.follower = LogFollower(self.feed, retention_s=86_400.0, registry=self.registry)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@contextlib.asynccontextmanager
async def _stack(tmp_path: Path, fail_seq: int = -1) -> AsyncIterator[tuple[Worker, ShareLog]]:
    with start_node(tmp_path / "nats") as nd:
        cfg = JetStreamConfig(servers=tuple(nd.servers))
        w = Worker(tmp_path, cfg, fail_seq)
        writer = asyncio.create_task(w.writer.run())
        sharelog = await ShareLog.open(cfg, tmp_path, "test")
        await sharelog.ensure_streams()
        try:
            yield w, sharelog
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await w.follower.close()
            await w.feed.close()
            await sharelog.close()
            w.store.close()


async def _until(cond: Callable[[], bool], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def test_the_term_reads_only_what_the_follower_had_not_stored(tmp_path: Path) -> None:
    async with _stack(tmp_path) as (w, sharelog):
        last = 0
        for seq in range(40):
            last = (await sharelog.publish_part(_row(seq), 0)).seq
            await sharelog.publish_part(_row(1000 + seq), 1)  # another shard's, not followed
        w.follower.start()
        await _until(lambda: w.sample("tecc_standby_parts_total", {"outcome": "accepted"}) == 40)
        assert w.store.batch_count() == 40
        assert w.sample("tecc_log_parts_total", {"outcome": "accepted"}) == 0  # counted apart
        assert {o for _, o in w.stored} == {"duplicate"}  # history: the owner counted them
        start = await w.follower.handoff()
        assert start == last + 1
        assert not w.follower.running
        assert w.sample("tecc_standby_log_floor") == last
        for seq in range(40, 50):  # logged after the handoff: the term reads these
            await sharelog.publish_part(_row(seq), 0)
        term = asyncio.create_task(w.feed.run(term=9, start_seq=start))
        try:
            await _until(lambda: w.sample("tecc_log_parts_total", {"outcome": "accepted"}) == 10)
            await asyncio.sleep(0.5)  # nothing more arrives: the term read only those ten
            assert w.sample("tecc_log_parts_total", {"outcome": "duplicate"}) == 0
            assert w.sample("tecc_log_parts_total", {"outcome": "accepted"}) == 10
            assert w.store.batch_count() == 50
        finally:
            term.cancel()
            await asyncio.gather(term, return_exceptions=True)


async def test_a_part_not_stored_holds_the_floor_below_it(tmp_path: Path) -> None:
    """The floor is the server's ack floor: a failed insert (nak'd) keeps it below that
    part even though later parts were stored, until the redelivery is stored."""
    async with _stack(tmp_path, fail_seq=5) as (w, sharelog):
        seqs = [(await sharelog.publish_part(_row(seq), 0)).seq for seq in range(20)]
        w.follower.start()
        await _until(lambda: w.sample("tecc_standby_parts_total", {"outcome": "accepted"}) == 19)
        assert w.writer.failed == 1
        start = await w.follower.handoff()  # batch 5 not yet redelivered (nak delay 1 s)
        assert start <= seqs[5], (start, seqs)
        w.follower.start()  # standby again: from the floor, batch 5 is stored this time
        await _until(lambda: w.store.batch_count() == 20)
        await _until(lambda: w.sample("tecc_standby_parts_total", {"outcome": "accepted"}) == 20)
        assert await w.follower.handoff() == seqs[-1] + 1


async def test_a_term_without_a_follower_reads_the_whole_history(tmp_path: Path) -> None:
    async with _stack(tmp_path) as (w, sharelog):
        for seq in range(15):
            await sharelog.publish_part(_row(seq), 0)
        term = asyncio.create_task(w.feed.run(term=3))
        try:
            await _until(lambda: w.sample("tecc_log_parts_total", {"outcome": "accepted"}) == 15)
            assert w.store.batch_count() == 15
            assert [o for _, o in w.stored] == ["duplicate"] * 15  # history
        finally:
            term.cancel()
            await asyncio.gather(term, return_exceptions=True)


def _dump(store: ShareStore) -> tuple[object, ...]:
    conn = store._r  # the test reads the tables as stored
    return tuple(
        conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
        for t in ("epochs", "stream_state", "outbox")
    )


def _state(seed: int) -> StreamState:
    ring = np.random.default_rng(seed).integers(0, 2**63, size=7, dtype=np.uint64)
    return StreamState(ring[:1], ring[1:3], ring[3:7], Scale(-2, 1.5))


@contextlib.asynccontextmanager
async def _epochs(tmp_path: Path) -> AsyncIterator[tuple[JetStreamContext, CommittedState]]:
    """A NATS node with TECC_EPOCHS and shard 0's commit record claimed by token 5."""
    with start_node(tmp_path / "nats") as nd:
        nc = await nats.connect(servers=nd.servers)
        try:
            js = nc.jetstream()
            await epochlog.ensure_stream(js, JetStreamConfig(servers=tuple(nd.servers)))
            commits = await CommittedState.open(js, shard=0)
            await commits.claim(fence=5, worker_id="owner", now_ns=1)
            yield js, commits
        finally:
            await nc.close()


async def test_a_standby_applies_recorded_epochs_and_the_takeover_only_the_rest(
    tmp_path: Path,
) -> None:
    """An owner records epochs (a rewind among them, one message never recorded); a
    standby's epoch follower applies them through the record's ``log_seq``; the takeover
    replays only what came after and drops the results released meanwhile. The store
    equals one rebuilt by the whole replay (the code before this change's only path)."""
    async with _epochs(tmp_path) as (js, commits):
        standby, whole = ShareStore(tmp_path / "standby.db"), ShareStore(tmp_path / "whole.db")
        follower = EpochFollower(standby, 0)
        try:

            async def record(end: int, seed: int, *, recorded: bool = True) -> int:
                wire = epochlog.EpochWire(
                    shard=0, end_ns=end, readings=3, done_ns=end + 1, fence=5,
                    states=epochlog.wire_states({("gw", f"s{seed % 3}"): _state(seed)}),
                    body=f"r{end}-{seed}".encode(),
                )  # fmt: skip
                seq = await epochlog.publish_epoch(js, wire, f"0:5:{end}:{seed}")
                if recorded:
                    await commits.commit(
                        fence=5, worker_id="owner", now_ns=end, watermark_ns=end, log_seq=seq
                    )
                return seq

            for end, seed in ((10, 1), (20, 2), (30, 3)):
                await record(end, seed)
            await record(40, 4, recorded=False)  # the owner died before its record write
            follower.start(js, commits)
            await _until(lambda: standby.watermark() == 30)
            await asyncio.sleep(1.5)  # the unrecorded epoch 40 is never applied
            assert standby.watermark() == 30
            for end, seed in ((30, 5), (40, 6), (50, 7)):  # a new term rewinds to 30
                await record(end, seed)
            await commits.release(fence=5, worker_id="owner", now_ns=60, released_ns=40)
            after = await follower.stop()
            assert after > 0
            record_now = await commits.load()
            assert record_now is not None
            rows = functools.partial(epoch_rows, released_ns=record_now.released_ns)

            async def apply_standby(batch: list[epochlog.EpochWire]) -> None:
                standby.commit_epochs(rows(batch))

            async def apply_whole(batch: list[epochlog.EpochWire]) -> None:
                whole.commit_epochs(rows(batch))

            rest = await epochlog.replay(js, 0, record_now.log_seq, apply_standby, after_seq=after)
            standby.drop_released(record_now.released_ns)
            total = await epochlog.replay(js, 0, record_now.log_seq, apply_whole)
            assert rest < total == 7
            assert _dump(standby) == _dump(whole)
            assert standby.watermark() == 50
            assert standby.next_outgoing() == (50, b"r50-7")  # 30 and 40 released
        finally:
            await follower.stop()
            standby.close()
            whole.close()


async def test_a_handoff_at_any_moment_of_the_follower_returns_at_once(tmp_path: Path) -> None:
    """Fails on the first version of the follower, which only cancelled its task: a
    cancellation that arrived as nats-py's connect completed was swallowed (Python
    3.11's ``wait_for``), the follower ran on and the takeover waited for it for ever
    (in the HA soak no shard got an owner). Now a flag stops it at its next step."""
    async with _stack(tmp_path) as (w, sharelog):
        for seq in range(5):
            await sharelog.publish_part(_row(seq), 0)
        js = sharelog.nc.jetstream()
        epochs = EpochFollower(w.store, 0)
        commits = await CommittedState.open(js, shard=0)
        for i in range(120):
            w.follower.start()
            epochs.start(js, commits)
            await asyncio.sleep(0.0002 * (i % 40))  # through connect, subscribe, fetch
            async with asyncio.timeout(5):
                start = await w.follower.handoff()
                await epochs.stop()
            assert start >= 1
            assert not w.follower.running
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert not names & {"standby-follower", "epoch-follower"}, names
        assert w.store.batch_count() <= 5


async def test_the_standby_store_keeps_no_released_result_and_replay_leaves_no_consumer(
    tmp_path: Path,
) -> None:
    """While it follows, the standby's outbox holds only results not yet released (else it
    grew by one body per epoch for as long as it waited), and each replay deletes its
    ephemeral consumer (else one lingered 30 s per pass)."""
    async with _epochs(tmp_path) as (js, commits):
        standby = ShareStore(tmp_path / "standby.db")
        follower = EpochFollower(standby, 0)
        try:
            for end in range(10, 60, 10):
                wire = epochlog.EpochWire(
                    shard=0, end_ns=end, readings=3, done_ns=end + 1, fence=5,
                    states=epochlog.wire_states({("gw", "a"): _state(end)}), body=b"r%d" % end,
                )  # fmt: skip
                seq = await epochlog.publish_epoch(js, wire, f"0:5:{end}")
                await commits.commit(
                    fence=5, worker_id="owner", now_ns=end, watermark_ns=end, log_seq=seq
                )
            await commits.release(fence=5, worker_id="owner", now_ns=60, released_ns=30)
            follower.start(js, commits)
            await _until(lambda: standby.watermark() == 50)
            await _until(lambda: standby.next_outgoing() == (40, b"r40"))
            await commits.release(fence=5, worker_id="owner", now_ns=61, released_ns=50)
            await _until(lambda: standby.next_outgoing() is None)
            info = await js.stream_info(epochlog.EPOCHS)
            assert info.state.consumer_count == 0
        finally:
            await follower.stop()
            standby.close()


async def test_the_standby_prunes_by_the_watermark_not_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts older than ``retention_s`` by the wall clock but not analysed yet (the
    watermark lags: an MPC stall) stay in the standby's store, as in the owner's."""
    monkeypatch.setattr(follower_mod, "PRUNE_EVERY_S", 0.0)
    async with _stack(tmp_path) as (w, sharelog):
        w.follower.retention_s = 1.0
        old = _row(0)
        hour = 3600 * 10**9
        seg = old.segments[0]
        ts = (np.frombuffer(seg.ts, dtype="<i8") - hour).astype("<i8").tobytes()
        old = dataclasses.replace(
            old,
            min_ts=old.min_ts - hour,
            max_ts=old.max_ts - hour,
            segments=(dataclasses.replace(seg, ts=ts),),
        )
        await sharelog.publish_part(old, 0)
        w.follower.start()
        await _until(lambda: w.store.batch_count() == 1)
        await asyncio.sleep(0.5)  # several prune passes: watermark 0, nothing analysed
        assert w.store.batch_count() == 1


async def test_a_follower_whose_consumer_vanished_subscribes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails without the resubscription: a deleted consumer's fetches only time out (nats-py
    skips the 409), so the standby silently stopped following."""
    monkeypatch.setattr(follower_mod, "FLOOR_EVERY_S", 0.1)
    async with _stack(tmp_path) as (w, sharelog):
        await sharelog.publish_part(_row(0), 0)
        w.follower.start()
        await _until(lambda: w.store.batch_count() == 1)
        js = sharelog.js
        names = [c.name for c in await js.consumers_info("TECC_SHARES")]
        assert len(names) == 1
        await js.delete_consumer("TECC_SHARES", names[0])
        await sharelog.publish_part(_row(1), 0)
        await _until(lambda: w.store.batch_count() == 2)
        # the new consumer's ack floor is read every FLOOR_EVERY_S; a handoff on a busy
        # machine may return the last floor read when the follower takes > 1 s to stop
        await _until(lambda: w.follower.floor >= 2)
        assert (await w.follower.handoff()) > 1


async def test_settled_waits_for_a_local_commit_its_cancellation_left_running(
    tmp_path: Path,
) -> None:
    """After a lost lease the follower writes epochs at once: the coordinator's last local
    commit, still running in its thread after the cancellation, must land first (else it
    rewinds the epochs the follower applied)."""
    coordinator = _coordinators(tmp_path, n=2)[0]
    release, landed = threading.Event(), threading.Event()
    commit = coordinator.store.commit_epoch

    def slow_commit(
        end_ns: int,
        states: dict[tuple[str, str], StreamState],
        readings: int,
        now_ns: int,
        result: bytes | None = None,
    ) -> None:
        release.wait(5)
        commit(end_ns, states, readings, now_ns, result)
        landed.set()

    coordinator.store.commit_epoch = slow_commit  # type: ignore[method-assign]
    task = asyncio.create_task(coordinator._commit(10, {}, 0))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not landed.is_set()  # cancelled, but the thread still commits
    threading.Timer(0.2, release.set).start()
    await coordinator.settled()
    assert landed.is_set()
    assert coordinator.store.watermark() == 10
    coordinator.store.close()
