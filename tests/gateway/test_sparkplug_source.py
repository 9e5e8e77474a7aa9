"""The gateway's Sparkplug B mode against a real broker and the simulator's edge node."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from firmware_sim.sparkplug_node import EdgeNode, SparkplugLink
from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
SENSORS = ["press1.Temp", "press1.pump.Flow", "press1.pump.Speed"]


def _config(tmp: Path, port: int, clusters: list[FakeCluster], platform: Platform) -> Path:
    path = write_config(tmp, clusters=clusters, platform=platform, mqtt_port=port)
    doc = yaml.safe_load(path.read_text())
    doc["sensors"] += [{"id": s, "range": [-1000, 1000]} for s in SENSORS]
    doc["sources"]["mqtt"][0]["topics"].append(
        {"filter": "spBv1.0/plant/#", "sensor_template": "{node}.{device}.{metric}",
         "format": "sparkplug_b"}
    )  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def _values(clusters: list[FakeCluster], sensor: str) -> list[float]:
    return sorted(v for s, _, v in readings(clusters) if s == sensor)


async def test_births_gap_rebirth_death_and_garbage(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Data by alias arrives; a seq gap asks for a rebirth and nothing is lost; a death is
    stale; a malformed payload is counted and the source keeps going."""
    with mosquitto(tmp_path / "mq") as broker:
        cfg = _config(tmp_path, broker.port, clusters, platform)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            node = EdgeNode(
                group="plant", node="press1", node_metrics=("Temp",),
                devices={"pump": ("Flow", "Speed")},
            )  # fmt: skip
            link = SparkplugLink(node, "127.0.0.1", broker.port)
            await link.start()
            try:
                now = time.time()
                for i in range(5):
                    await link.publish_data("", [("Temp", now + i * 0.01, 20.0 + i)])
                    await link.publish_data("pump", [("Flow", now + i * 0.01, 1.0 + i)])
                node.skip_seq(3)  # the host sees a gap
                await link.publish_data("pump", [("Speed", now + 0.1, 900.0)])
                await wait_for(lambda: link.rebirths >= 1, 15, "the rebirth request")
                for i in range(5, 8):
                    await link.publish_data("", [("Temp", now + i * 0.01, 20.0 + i)])
                await link.publish(node.topic("NDATA"), b"\xff\x00garbage")
                await link.publish_data("", [("Temp", now + 0.2, 99.0)])
                await wait_for(
                    lambda: 99.0 in _values(clusters, "press1.Temp"), 15, "after garbage"
                )
            finally:
                await link.stop()  # a clean NDEATH
            await asyncio.sleep(0.5)
            text = await scrape(agent.cfg.http.port)
    # Every published value arrives; the rebirth's certificates add each metric's current
    # value (Temp 24, Flow 5, Speed 900) as one reading at the birth.
    assert _values(clusters, "press1.Temp") == sorted([*(20.0 + i for i in range(8)), 24.0, 99.0])
    assert _values(clusters, "press1.pump.Flow") == sorted([*(1.0 + i for i in range(5)), 5.0])
    assert _values(clusters, "press1.pump.Speed") == [900.0, 900.0]  # the gap's message decoded
    assert metric(text, "gateway_sparkplug_rebirth_requests_total") >= 1
    assert metric(text, "gateway_readings_rejected_total", reason="malformed") >= 1
    assert metric(text, "gateway_sparkplug_stale_sensors") == 3
