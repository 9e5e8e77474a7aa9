"""A worker's progress consumer recovers soon after the JetStream node holding it dies.

A shard worker reads the gateways' progress notices through an ordered consumer
of TECC_PROGRESS (R=1, in memory, on one node of the party's cluster). When that
node is SIGKILLed the consumer is gone with it; nats-py notices only from the
missing idle heartbeats and then creates a new one. Real 3-node cluster, real
kill: a notice published once the stream has its new leader must reach the
subscription within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.jetstream.kv import TRANSIENT, connect
from cloud_tecc.jetstream.server import start_cluster
from cloud_tecc.jetstream.sharelog import Overloaded, ShareLog

pytestmark = [pytest.mark.processes, pytest.mark.slow]
#: Well below nats-py's default recovery (two 5 s heartbeats, checked every 10 s)
#: and well above the recovery at the configured heartbeat (about 1 s).
WITHIN_S = 5.0


async def _publish_until_stored(sharelog: ShareLog, notice: bytes, within_s: float) -> float:
    """Publish ``notice`` until the stream acknowledges it (its new leader serves);
    the monotonic time of the acknowledgement."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await sharelog.publish_progress("gw-a", notice)
            return time.monotonic()
        except Overloaded:  # no stream leader yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_notices_resume_soon_after_the_consumer_node_is_killed(tmp_path: Path) -> None:
    """Fails on the code before this change (nats-py's 5 s default heartbeat): the
    notice published after the election reached the worker 10–20 s later."""
    with start_cluster(tmp_path / "nats") as dep:
        cfg = JetStreamConfig(servers=tuple(dep.servers), replicas=3)
        sharelog = ShareLog(await connect(dep.servers, reconnect_time_wait=0.25), cfg)
        try:
            await sharelog.ensure_streams()
            sub = await sharelog.subscribe_progress()
            await _publish_until_stored(sharelog, b"before", 10)
            assert (await sub.next_msg(timeout=10)).data == b"before"
            for _ in range(40):  # the consumer's node, once the cluster reports it
                try:
                    info = await sub.consumer_info()
                except TRANSIENT:
                    await asyncio.sleep(0.25)
                    continue
                if info.cluster is not None and info.cluster.leader:
                    host = info.cluster.leader
                    break
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("the progress consumer has no node")
            node = next(n for n in dep.nodes if n.spec.name == host)
            await asyncio.sleep(1.5)  # activity seen before the kill: nats-py's check resets
            node.kill()
            stored = await _publish_until_stored(sharelog, b"after", 40)
            msg = await sub.next_msg(timeout=30)
            took = time.monotonic() - stored
            assert msg.data == b"after"
            assert took < WITHIN_S, f"the notice arrived {took:.1f} s after it was stored"
        finally:
            await sharelog.close()
