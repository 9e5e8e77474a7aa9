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
    async with running(cfg, keys) as agent:
        await asyncio.sleep(3.0)  # broker down: notices go out, the backlog is not here
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


async def test_a_wrong_clock_cannot_push_progress(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Four messages stamped 2099 are rejected; progress stays at the gateway's clock.

    Both declared MQTT sensors get two readings stamped in 2099, then correctly
    stamped ones. Fails on the code before this change: the 2099 readings were
    accepted, the declared progress jumped to 2099 and every later reading of
    every sensor was late (never analysed).
    """
    future = 4_070_908_800.0  # 2099-01-01
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            wrong = [
                (f"plant/line1/{s}/json", json.dumps({"v": 1.0, "ts": future}).encode())
                for s in ("temp", "press", "temp", "press")
            ]
            await asyncio.to_thread(publish, broker.port, wrong)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(publish, broker.port, _msgs(0, 50))
            now = time.time()
            await wait_for(lambda: len(readings(clusters)) == 50, 10, "valid readings")
            for c in clusters:
                await wait_for(lambda c=c: c.notices and c.notices[-1][0] > now * 1e9, 10, "notice")
            text = await scrape(agent.cfg.http.port)
    assert metric(text, "gateway_readings_rejected_total", reason="future_timestamp") == 4
    assert metric(text, "gateway_readings_late_total") == 0
    assert metric(text, "gateway_progress_through_seconds") < time.time() + 1
    for c in clusters:
        assert max(t for t, _ in c.notices) < (time.time() + 1) * 1e9
