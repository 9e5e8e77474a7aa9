"""Progress notices across a gateway restart: the broker's backlog is never overtaken."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml

from gateway.config_yaml import parse_file
from gateway.errors import GatewayConfigError
from gateway.eventtime import EventTime
from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, progress_violations, readings
from tests.gateway.services import mosquitto

TOPIC = "plant/line1/temp/json"


def _msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    """Sensor-timestamped readings (value i / 100), stamped now."""
    now = time.time()
    return [(TOPIC, json.dumps({"v": (start + i) / 100, "ts": now}).encode()) for i in range(n)]


@pytest.mark.mqtt
@pytest.mark.slow
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


S = 1_000_000_000  # ns per second
HISTORY = 1_386_000_000 * S  # December 2013
NOW = 1_764_230_400 * S


def test_event_time_ordered_sensor_lifts_its_bound_above_the_floor() -> None:
    """Ordered: max(newest, floor) per sensor; a silent sensor is at the floor."""
    et = EventTime(["a", "b"], ordered=True)
    floor = NOW - S
    assert et.through(floor, 0.0) == floor
    et.observe(["a", "b"], [NOW - 10, NOW - 20], 0.0)
    assert et.through(floor, 0.0) == NOW - 20
    assert EventTime(["a"], ordered=False).through(floor, 0.0) == floor


def test_event_time_backfill_sensor_holds_progress_at_its_own_event_time() -> None:
    """Backfill: no claim before the first reading, then its newest (2013) stamp, not the floor.

    Fails on the code before this change: the floor (now - slack) overtook every
    historical reading, so all of them were late.
    """
    et = EventTime(["live", "hist"], ordered=True, backfill=["hist"], backfill_idle_s=5.0)
    floor = NOW - S
    et.observe(["live"], [NOW - 10], 1.0)
    assert et.through(floor, 1.0) == 0  # history not here yet: every epoch waits
    et.observe(["hist", "hist"], [HISTORY, HISTORY + 300 * S], 2.0)
    assert et.through(floor, 2.0) == HISTORY + 300 * S
    assert et.backfilling(2.0) == ["hist"]
    et.observe(["hist"], [HISTORY + 600 * S], 6.9)
    assert et.through(floor, 11.8) == HISTORY + 600 * S  # heard 4.9 s ago: still holding
    assert et.through(floor, 11.9) == floor  # idle 5 s: caught up, the live rule again
    assert et.backfilling(11.9) == []


def test_event_time_backfill_sensor_silent_from_the_start_stops_holding() -> None:
    """A declared backfill sensor that never reports holds for ``backfill_idle_s`` only."""
    et = EventTime(["hist"], ordered=True, backfill=["hist"], backfill_idle_s=5.0, started=100.0)
    assert et.through(NOW - S, 104.9) == 0
    assert et.through(NOW - S, 105.0) == NOW - S


def _gateway_doc(**progress: object) -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load(
        (Path(__file__).parents[2] / "configs" / "gateway.yaml").read_text()
    )
    doc["progress"] = progress
    return doc


def test_backfill_config_is_checked() -> None:
    """Backfill sensors must be declared and ordered; the error names the key."""
    sensors = _gateway_doc()["sensors"]
    assert isinstance(sensors, list)
    first = sensors[0]["id"]
    with pytest.raises(GatewayConfigError, match=r"progress.*backfill_sensors needs ordered"):
        parse_file(_gateway_doc(ordered_sensors=False, backfill_sensors=[first]))
    with pytest.raises(GatewayConfigError, match=r"progress\.backfill_idle_s"):
        parse_file(_gateway_doc(backfill_idle_s=0.0))
    with pytest.raises(GatewayConfigError, match=r"backfill_sensors names undeclared"):
        parse_file(_gateway_doc(backfill_sensors=["no.such.sensor"]))


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
