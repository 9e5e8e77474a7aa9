"""Readings from a real mosquitto and a real asyncua server reach both clusters, shared."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.plc import Plc
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.opcua]


async def test_mqtt_and_opcua_readings_arrive_shared(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Every published value is reconstructed exactly from the two clusters' shares."""
    plc = Plc(5)
    await plc.start()
    try:
        with mosquitto(tmp_path / "mq") as broker:
            cfg = write_config(
                tmp_path,
                clusters=clusters,
                platform=platform,
                mqtt_port=broker.port,
                opcua_url=plc.url,
                opcua_nodes=5,
            )
            async with running(cfg, keys) as agent:
                await wait_for(
                    lambda: agent.mqtt[0].connected and agent.opcua[0].subscribed == 5,
                    20,
                    "sources to connect",
                )
                temps = [round(20 + i * 0.125, 3) for i in range(200)]
                msgs = [("plant/line1/temp/value", str(v).encode()) for v in temps]
                msgs.append(
                    (
                        "plant/line1/press/json",
                        json.dumps({"v": 512.5, "ts": 1764000000.5}).encode(),
                    )
                )
                msgs.append(
                    (
                        "plant/line1/press/batch",
                        json.dumps(
                            [{"v": 100 + i, "ts": 1764000001 + i} for i in range(50)]
                        ).encode(),
                    )
                )
                await asyncio.to_thread(publish, broker.port, msgs)
                opc_values: dict[str, list[float]] = {f"line2.v{i}": [] for i in range(5)}
                for step in range(1, 11):
                    for i in range(5):
                        value = i * 1000 + step * 0.5
                        await plc.write(i, value)
                        opc_values[f"line2.v{i}"].append(value)
                    await asyncio.sleep(0.06)

                def arrived() -> bool:
                    got = readings(clusters)
                    last = {(s, v) for s, _, v in got}
                    return sum(1 for s, _, _ in got if s.startswith("line1")) == 251 and all(
                        (s, vs[-1]) in last for s, vs in opc_values.items()
                    )

                await wait_for(arrived, 20, "all readings at both clusters")
                text = await scrape(agent.cfg.http.port)
    finally:
        await plc.stop()
    got = readings(clusters)
    by_sensor: dict[str, list[tuple[int, float]]] = {}
    for sensor, ts, value in got:
        by_sensor.setdefault(sensor, []).append((ts, value))
    assert sorted(v for _, v in by_sensor["line1.temp"]) == sorted(temps)
    press = sorted(by_sensor["line1.press"])
    assert press[0] == (1_764_000_000_500_000_000, 512.5)
    assert [v for _, v in press[1:]] == [100 + i for i in range(50)]
    for sensor, values in opc_values.items():
        seen = [v for _, v in sorted(by_sensor[sensor])]
        assert seen[-10:] == values, sensor  # every change, in order (initial 0.0 first)
    for value in (v for vs in by_sensor.values() for _, v in vs):
        assert math.isfinite(value)
    assert metric(text, "gateway_readings_total", source="mq") == 251
    assert metric(text, "gateway_cluster_attested", cluster="0") == 1
    assert all(c.rejected == 0 for c in clusters)
