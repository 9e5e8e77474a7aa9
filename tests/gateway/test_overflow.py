"""A full spool refuses new readings loudly and never evicts what it holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto

pytestmark = pytest.mark.mqtt
T = "plant/line1/temp/value"


def _msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    return [(T, str((start + i) / 100).encode()) for i in range(n)]


async def _status(port: int) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status


async def test_full_spool_refuses_counts_and_recovers(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Overflow: refused readings are counted, alarm raised, spooled ones all delivered."""
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(
            tmp_path,
            clusters=clusters,
            platform=platform,
            mqtt_port=broker.port,
            max_readings=1,
            spool_max_bytes=65536,
        )
        async with running(cfg, keys) as agent:
            port = agent.cfg.http.port
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 5))
            await wait_for(lambda: len(readings(clusters)) == 5, 10, "first readings")
            for c in clusters:
                await c.stop()
            await asyncio.to_thread(publish, broker.port, _msgs(5, 400))
            await wait_for(
                lambda: (
                    agent.ingest.accepted["mq"] == 405
                    and len(agent.batcher) == 0
                    and agent.overflow  # the alarm is raised after the last batch is refused
                ),
                20,
                "all offered and the spool full",
            )
            during = await scrape(port)
            during_status = await _status(port)
            for c in clusters:
                await c.start()
            await wait_for(lambda: agent.spool.depth(0) == agent.spool.depth(1) == 0, 30, "drain")
            await asyncio.to_thread(publish, broker.port, _msgs(405, 5))
            await wait_for(
                lambda: (
                    agent.ingest.accepted["mq"] == 410
                    and len(agent.batcher) == 0
                    and not agent.overflow
                ),
                10,
                "recovered",
            )
            await asyncio.sleep(0.3)
            after = await scrape(port)
    refused = metric(during, "gateway_readings_refused_total", reason="spool_full")
    assert metric(during, "gateway_spool_overflow_alarm") == 1
    assert during_status == 503
    assert refused > 100
    delivered = {round(v * 100) for _, _, v in readings(clusters)}
    assert len(delivered) + refused == 410  # every reading is either delivered or counted
    assert set(range(5)) <= delivered
    assert set(range(405, 410)) <= delivered
    assert metric(after, "gateway_spool_overflow_alarm") == 0
