"""Load mode: many topics or nodes at a total rate, every reading delivered."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes

from demo.services import free_port
from firmware_sim.config import SecurityMode
from firmware_sim.config_yaml import opcua_settings
from firmware_sim.errors import SimConfigError
from firmware_sim.load import LoadSpec, load_sensors, run_mqtt_load, write_load
from firmware_sim.opcua_server import SimOpcuaServer
from firmware_sim.schema import OpcuaDoc
from tests.sim.simhelpers import Collector
from tests.support.mosquitto import Broker


def test_load_spec_validates() -> None:
    """Nonsense load parameters are refused."""
    with pytest.raises(SimConfigError):
        LoadSpec(nodes=0, total_rate=10, duration_s=1)
    with pytest.raises(SimConfigError):
        LoadSpec(nodes=1, total_rate=10, duration_s=1, qos=2)
    assert LoadSpec(nodes=3, total_rate=250, duration_s=2).total_readings == 500


@pytest.mark.mqtt
@pytest.mark.parametrize("batch", [1, 4])
async def test_mqtt_load_delivers_every_reading(broker: Broker, batch: int) -> None:
    """QoS 1 load over 120 topics: the subscriber receives every reading on every topic."""
    spec = LoadSpec(nodes=120, total_rate=1000, duration_s=1.0, qos=1, batch=batch)
    async with Collector(broker.host, broker.port, "site/load/#") as collector:
        report = await asyncio.to_thread(run_mqtt_load, spec, broker.host, broker.port)
        await collector.wait_for(report.messages)
    assert report.readings == 1000
    assert report.acked == report.messages == -(-1000 // batch)
    payloads = collector.received.payloads
    assert len(payloads) == 120
    readings = 0
    for topic, items in payloads.items():
        assert topic.startswith("site/load/m00")
        for raw in items:
            obj = json.loads(raw)
            readings += len(obj) if isinstance(obj, list) else 1
    assert readings == 1000
    assert json.loads(report.to_json())["readings"] == 1000


@pytest.mark.opcua
async def test_opcua_load_writes_every_node(tmp_path: Path) -> None:
    """OPC-UA load over 30 nodes: every node ends with a good, in-range value."""
    spec = LoadSpec(nodes=30, total_rate=300, duration_s=0.5)
    settings = dataclasses.replace(
        opcua_settings(OpcuaDoc(port=free_port(), security=(SecurityMode.NONE,))),
        state_dir=tmp_path,
    )
    server = SimOpcuaServer(settings, load_sensors(spec))
    await server.start()
    try:
        report = await write_load(spec, server)
        async with Client(settings.endpoint, timeout=30) as client:
            ns = await client.get_namespace_index("urn:tecc:sim")
            values = [
                await client.get_node(f"ns={ns};s={s.sensor_id}").read_data_value()
                for s in load_sensors(spec)
            ]
    finally:
        await server.stop()
    assert report.readings == 150
    assert [s.sensor_id for s in load_sensors(spec)][:2] == ["load.m000.s00000", "load.m000.s00001"]
    for value in values:
        assert value.StatusCode is not None
        assert value.StatusCode.value == StatusCodes.Good
        assert value.Value is not None
        assert 0.0 < value.Value.Value < 100.0
