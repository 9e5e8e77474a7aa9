"""A shard worker's epoch commit goes to TECC_EPOCHS and the fenced record; a stale one stops."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from cloud_tecc.config import load_party
from cloud_tecc.jetstream import epochlog
from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import FencedError, connect
from cloud_tecc.jetstream.lease import Lease, LeaseState
from cloud_tecc.jetstream.server import start_node
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.logfeed import LogFeed
from cloud_tecc.party.store import ShareStore
from cloud_tecc.party.takeover import ActiveShard
from cloud_tecc.party.writer import GroupWriter
from demo.devstack.deployment import Deployment


def test_a_fenced_commit_ends_the_term_and_lands_nothing(tmp_path: Path) -> None:
    node = start_node(tmp_path / "nats")
    Deployment(tmp_path, {"window_s": 10, "min_count": 1}, {})
    doc = yaml.safe_load((tmp_path / "party0.yaml").read_text())
    doc["jetstream"] = {"servers": node.servers, "lease_ttl_s": 2}
    doc["worker_id"] = "old-owner"
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_party(tmp_path / "w.yaml")
    js_cfg = cfg.jetstream
    assert js_cfg is not None
    store = ShareStore(tmp_path / "shares.db")
    reg = CollectorRegistry()
    feed = LogFeed(
        cfg=js_cfg, state_dir=tmp_path, shard=0, service_id="party0", store=store,
        writer=GroupWriter(store), tracker=ProgressTracker((), started_ns=0, active_ns=10**9),
        keys={}, stored=lambda row, outcome: None, registry=reg,
    )  # fmt: skip
    active = ActiveShard(cfg=cfg, store=store, feed=feed, registry=reg)

    async def run() -> None:
        nc = await connect(node.servers)
        js = nc.jetstream()
        await epochlog.ensure_stream(js, js_cfg)
        lease = Lease(js, shard=0, worker_id="old-owner", ttl_s=2)
        await lease.open()
        await lease.acquire()
        commits = await CommittedState.open(js, shard=0)
        active.nc, active.lease, active.commits = nc, lease, commits
        await active.commit(10, {}, 0, time.time_ns(), b"r10")
        record = await commits.load()
        assert record is not None
        assert (record.watermark_ns, record.fence) == (10, lease.token)
        msg = await js.get_msg(epochlog.EPOCHS, record.log_seq)
        assert epochlog.decode_epoch(msg.data or b"").body == b"r10"
        # a successor claims with a newer token (the old owner has not noticed yet)
        await commits.claim(fence=lease.token + 100, worker_id="new-owner", now_ns=time.time_ns())
        with pytest.raises(FencedError):
            await active.commit(20, {}, 0, time.time_ns(), b"r20")
        assert lease.state is LeaseState.LOST
        assert lease.lost_reason.startswith("fenced")
        record = await commits.load()
        assert record is not None
        assert (record.watermark_ns, record.worker_id) == (10, "new-owner")
        await nc.close()

    try:
        asyncio.run(run())
    finally:
        store.close()
        node.stop()


def test_a_commit_waits_out_a_stalled_jetstream_while_the_lease_holds(tmp_path: Path) -> None:
    """The party's JetStream stops answering for longer than a publish timeout (as while a
    killed node's stream leader is re-elected): the commit is retried in place and lands
    once, with the session and the computed epoch kept.

    Fails on the code before this change: the publish timed out after 5 s and the commit
    raised ``KVError`` (the coordinator then ended the MPC session and recomputed).
    """
    node = start_node(tmp_path / "nats")
    Deployment(tmp_path, {"window_s": 10, "min_count": 1}, {})
    doc = yaml.safe_load((tmp_path / "party0.yaml").read_text())
    doc["jetstream"] = {"servers": node.servers, "lease_ttl_s": 30}
    doc["worker_id"] = "owner"
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_party(tmp_path / "w.yaml")
    js_cfg = cfg.jetstream
    assert js_cfg is not None
    store = ShareStore(tmp_path / "shares.db")
    reg = CollectorRegistry()
    feed = LogFeed(
        cfg=js_cfg, state_dir=tmp_path, shard=0, service_id="party0", store=store,
        writer=GroupWriter(store), tracker=ProgressTracker((), started_ns=0, active_ns=10**9),
        keys={}, stored=lambda row, outcome: None, registry=reg,
    )  # fmt: skip
    active = ActiveShard(cfg=cfg, store=store, feed=feed, registry=reg)

    async def run() -> None:
        nc = await connect(node.servers)
        js = nc.jetstream()
        await epochlog.ensure_stream(js, js_cfg)
        lease = Lease(js, shard=0, worker_id="owner", ttl_s=30)
        await lease.open()
        await lease.acquire()
        commits = await CommittedState.open(js, shard=0)
        active.nc, active.lease, active.commits = nc, lease, commits
        await active.commit(10, {}, 0, time.time_ns(), b"r10")
        node.nodes[0].signal(signal.SIGSTOP)
        try:
            pending = asyncio.create_task(active.commit(20, {}, 0, time.time_ns(), b"r20"))
            await asyncio.sleep(6.5)  # longer than the 5 s publish timeout
            assert not pending.done(), (
                f"the commit ended while JetStream was stopped: {pending.exception()!r}"
                if pending.done()
                else ""
            )
        finally:
            node.nodes[0].signal(signal.SIGCONT)
        await asyncio.wait_for(pending, 30)
        record = await commits.load()
        assert record is not None
        assert (record.watermark_ns, record.fence) == (20, lease.token)
        msg = await js.get_msg(epochlog.EPOCHS, record.log_seq)
        assert epochlog.decode_epoch(msg.data or b"").body == b"r20"
        info = await js.stream_info(epochlog.EPOCHS)
        assert info.state.messages == 2  # each epoch once, however often it was sent
        await nc.close()

    try:
        asyncio.run(run())
    finally:
        store.close()
        node.stop()
