"""The share log against a real node: dedup by Nats-Msg-Id, limits, and Overloaded."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.jetstream.server import start_node
from cloud_tecc.jetstream.sharelog import (
    RETRY_DOWN_S,
    RETRY_FULL_S,
    SHARES,
    Overloaded,
    ShareLog,
    client_servers,
    decode_part,
)
from cloud_tecc.party.store import BatchRow, SegmentRow

pytestmark = pytest.mark.processes


def _row(seq: int, n: int = 1000) -> BatchRow:
    ts = np.arange(n, dtype="<i8")
    x = np.frombuffer(os.urandom(8 * n), dtype="<u8")  # shares: incompressible
    seg = SegmentRow(0, "temp", ts.tobytes(), x.tobytes(), None)
    return BatchRow("gw-1", seq, seq.to_bytes(32, "big"), 1, n, 0, n - 1, False, (seg,))


def test_dedup_limits_and_overload(tmp_path: Path) -> None:
    state = tmp_path / "party"
    with start_node(state / "nats") as nd:
        port = nd.nodes[0].spec.port
        cfg = JetStreamConfig(servers=(f"nats://127.0.0.1:{port}",), max_bytes=1 << 20)

        async def go() -> None:
            _, password = client_servers(cfg, state)  # the party's credential file
            assert password == nd.nodes[0].spec.password
            log = await ShareLog.open(cfg, state, "test")
            try:
                row = _row(1)
                first = await log.publish_part(row, 0)
                again = await log.publish_part(row, 0)
                assert (first.duplicate, again.duplicate, again.seq) == (False, True, first.seq)
                other_shard = await log.publish_part(row, 1)  # another part of batch 1
                assert not other_shard.duplicate
                assert decode_part(await log.stored_part(first.seq)) == (0, row)
                info = await log.js.stream_info(SHARES)
                assert info.config.max_bytes == 1 << 20
                assert info.config.duplicate_window == 600
                refused = None
                for seq in range(2, 200):  # 1 MiB, discard new: refused once full
                    try:
                        await log.publish_part(_row(seq), 0)
                    except Overloaded as exc:
                        refused = exc
                        break
                assert refused is not None
                assert refused.retry_after_s == RETRY_FULL_S
                assert (await log.js.stream_info(SHARES)).state.messages < 200
                nd.nodes[0].kill()
                with pytest.raises(Overloaded) as down:
                    await log.publish_part(_row(500), 0)
                assert down.value.retry_after_s == RETRY_DOWN_S
            finally:
                await log.close()

        asyncio.run(go())


def test_connect_to_nothing_is_overloaded(tmp_path: Path) -> None:
    cfg = JetStreamConfig(embedded=True)
    with pytest.raises(Overloaded, match="embedded JetStream node has not started"):
        client_servers(cfg, tmp_path)

    async def go() -> None:
        with pytest.raises(Overloaded):
            await ShareLog.connect(["nats://127.0.0.1:9"], None, cfg, "test", wait_s=1.0)

    asyncio.run(go())
