"""The JetStream launcher: a node needs the party's credential; R=3 survives a node's loss."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig

from cloud_tecc.jetstream.server import credential, start_cluster, start_node

pytestmark = pytest.mark.processes


def test_node_requires_the_party_credential(tmp_path: Path) -> None:
    with start_node(tmp_path / "nats") as dep:
        node = dep.nodes[0]

        async def go() -> None:
            nc = await nats.connect(servers=dep.servers, connect_timeout=2)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
            ack = await js.publish("t.x", b"1")
            assert ack.seq == 1
            await nc.close()
            bare = f"nats://{node.spec.host}:{node.spec.port}"
            refused = Client()
            try:
                with pytest.raises((NoServersError, nats.errors.Error, OSError)):
                    await refused.connect(
                        servers=[bare],
                        connect_timeout=2,
                        max_reconnect_attempts=0,
                        allow_reconnect=False,
                    )
            finally:  # the refused attempt's socket, else a ResourceWarning in a later test
                await refused.close()

        asyncio.run(go())
    mode = stat.S_IMODE((tmp_path / "nats" / "nats.password").stat().st_mode)
    assert mode == 0o600
    assert credential(tmp_path / "nats") == node.spec.password


def test_cluster_keeps_r3_stream_writable_with_one_node_killed(tmp_path: Path) -> None:
    with start_cluster(tmp_path / "nats") as dep:
        assert dep.replicas == 3

        async def publish(js: JetStreamContext, payload: bytes) -> PubAck | None:
            """``payload`` once the stream has a leader (None if it never gets one)."""
            for _ in range(100):  # a new stream's (or a killed leader's) election
                try:
                    return await js.publish("t.x", payload, timeout=1)
                except (nats.errors.Error, nats.js.errors.Error):
                    await asyncio.sleep(0.1)
            return None

        async def go() -> None:
            nc = await nats.connect(servers=dep.servers, connect_timeout=2)
            try:
                js = nc.jetstream()
                for _ in range(100):  # the meta leader may take a moment after readiness
                    try:
                        await js.add_stream(
                            StreamConfig(name="T", subjects=["t.>"], num_replicas=3)
                        )
                        break
                    except (nats.errors.TimeoutError, nats.js.errors.Error):
                        await asyncio.sleep(0.1)
                first = await publish(js, b"1")  # the R3 stream elects its leader after creation
                assert first is not None
                assert first.seq == 1
                dep.nodes[0].kill()
                acked = await publish(js, b"2")
                assert acked is not None
                assert acked.seq == 2
                info = await js.stream_info("T")
                assert info.state.messages == 2
            finally:
                await nc.close()

        asyncio.run(go())
