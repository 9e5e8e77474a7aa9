"""Progress notices across a gateway restart: the broker's backlog is never overtaken."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, progress_violations, readings
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
TOPIC = "plant/line1/temp/json"


def _msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    """Sensor-timestamped readings (value i / 100), stamped now."""
    now = time.time()
    return [(TOPIC, json.dumps({"v": (start + i) / 100, "ts": now}).encode()) for i in range(n)]


async def test_backlog_after_a_restart_is_not_overtaken(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Readings the broker held while the gateway was down arrive before any notice passes them.

    The gateway stops; 3,000 sensor-timestamped readings queue in its broker
    session; the broker stops too (saving them) and the gateway restarts
    without it, attests the clusters and sends notices for 3 s. Only then
    does the broker return and deliver the backlog, older than ``slack_s``
    by then. A gateway that declared ``now - slack_s`` while its MQTT
    session was not back would have overtaken all of it; it must hold its
    notices at "no claim" until the session has settled.
    """
    mq = tmp_path / "mq"
    with mosquitto(mq) as broker:
        port = broker.port
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, port, _msgs(0, 100))
            await wait_for(lambda: len(readings(clusters)) == 100, 10, "first readings")
        await asyncio.to_thread(publish, port, _msgs(100, 3000))  # queued for the session
    held = [len(c.notices) for c in clusters]
    async with running(cfg, keys) as agent:
        # broker down: a dozen notices (3 s at one per 0.25 s) go out, the backlog is not here
        await wait_for(
            lambda: all(len(c.notices) >= n + 12 for c, n in zip(clusters, held, strict=True)),
            30,
            "notices while the broker is down",
        )
        assert not agent.mqtt[0].connected
        assert all(c.notices for c in clusters)
        with mosquitto(mq, port=port):
            await wait_for(lambda: len(readings(clusters)) == 3100, 30, "the backlog")
            newest = max(t for _, t, _ in readings(clusters))
            for c in clusters:
                await wait_for(lambda c=c: c.notices[-1][0] > newest, 10, "progress past the end")
            text = await scrape(agent.cfg.http.port)
    assert sorted(round(v * 100) for _, _, v in readings(clusters)) == list(range(3100))
    assert progress_violations(clusters[0]) == progress_violations(clusters[1]) == []
    assert metric(text, "gateway_readings_late_total") == 0
