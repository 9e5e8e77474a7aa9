"""Replay mode: a CSV becomes a sensor on a real broker."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from asyncua.client.client import Client

from demo.services import free_port
from firmware_sim.clock import SimClock
from firmware_sim.config import (
    KIND_DEFAULTS,
    PayloadFormat,
    SecurityMode,
    SensorKind,
    SensorSpec,
    Transport,
)
from firmware_sim.config_yaml import mqtt_settings, opcua_settings
from firmware_sim.errors import ReplayError
from firmware_sim.mqtt_publisher import MqttLink, MqttSink
from firmware_sim.opcua_server import OpcuaSink, SimOpcuaServer
from firmware_sim.replay import ReplayRow, parse_timestamp, read_csv, replay
from firmware_sim.schema import MqttDoc, OpcuaDoc
from tests.sim.simhelpers import START, Collector
from tests.support.mosquitto import Broker

SPEC = SensorSpec(
    line="l1",
    machine="rec",
    name="flow",
    kind=SensorKind.GENERIC,
    unit="l/min",
    low=0.0,
    high=100.0,
    rate_hz=1.0,
    transport=Transport.MQTT,
    signal=KIND_DEFAULTS[SensorKind.GENERIC].signal,
    payload=PayloadFormat.JSON,
)


def test_csv_accepts_epoch_iso_and_a_header(tmp_path: Path) -> None:
    """Header row skipped; epoch and ISO 8601 (Z or naive = UTC) timestamps parse."""
    path = tmp_path / "rec.csv"
    path.write_text(
        "timestamp,value\n1764230400.0,1.5\n2025-11-27T08:00:01Z,2.5\n2025-11-27T08:00:02.5,3\n"
    )
    assert read_csv(path) == [
        ReplayRow(START, 1.5),
        ReplayRow(START + 1, 2.5),
        ReplayRow(START + 2.5, 3.0),
    ]
    assert parse_timestamp("2025-11-27T09:00:00+01:00") == START


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0,2.0\n0.5,3.0\n", r"rec.csv:2: timestamp '0.5' goes backwards"),
        ("1.0,abc\n", r"rec.csv:1: bad value 'abc'"),
        ("yesterday,1\n", r"rec.csv:1: bad timestamp 'yesterday'"),
        ("1.0,2.0,3.0\n", r"rec.csv:1: expected 'timestamp,value', got 3 fields"),
        ("timestamp,value\n", r"has no data rows"),
    ],
)
def test_bad_csv_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    """Malformed rows fail with file and line number."""
    path = tmp_path / "rec.csv"
    path.write_text(text)
    with pytest.raises(ReplayError, match=message):
        read_csv(path)


@pytest.mark.mqtt
async def test_replay_publishes_rows_in_order_accelerated(broker: Broker) -> None:
    """Rows arrive with their values and timestamps; rebase shifts every timestamp equally."""
    rows = [ReplayRow(START + i * 0.5, float(i % 7)) for i in range(40)]
    settings = mqtt_settings(MqttDoc(host=broker.host, port=broker.port, client_id="replay-test"))
    async with Collector(broker.host, broker.port, "site/#") as collector:
        link = MqttLink(settings)
        await link.connect()
        try:
            sink = MqttSink(link)
            count = await replay(rows, spec=SPEC, sink=sink, clock=SimClock(START, speed=100))
            await replay(rows, spec=SPEC, sink=sink, speed=100, rebase=START + 3600)
        finally:
            await link.close()
        await collector.wait_for(2 * count)
    got = [json.loads(p) for p in collector.received.payloads["site/l1/rec/flow"]]
    assert count == 40
    assert [(g["ts"], g["value"]) for g in got[:40]] == [(r.ts, r.value) for r in rows]
    assert [g["ts"] - 3600 for g in got[40:]] == [r.ts for r in rows]


@pytest.mark.opcua
async def test_replay_into_an_opcua_node(tmp_path: Path) -> None:
    """Replayed rows land in the sensor's OPC-UA node with their SourceTimestamps."""
    spec = dataclasses.replace(SPEC, transport=Transport.OPCUA)
    settings = dataclasses.replace(
        opcua_settings(OpcuaDoc(port=free_port(), security=(SecurityMode.NONE,))),
        state_dir=tmp_path,
    )
    server = SimOpcuaServer(settings, [spec])
    await server.start()
    changes: list[tuple[float, float]] = []

    class Handler:
        """Records (SourceTimestamp, value) of every data change."""

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            value = data.monitored_item.Value
            changes.append((value.SourceTimestamp.timestamp(), value.Value.Value))

    rows = [ReplayRow(START + i * 0.2, 10.0 + i) for i in range(20)]
    try:
        async with Client(settings.endpoint, timeout=30) as client:
            ns = await client.get_namespace_index("urn:tecc:sim")
            node = client.get_node(f"ns={ns};s=l1.rec.flow")
            sub = await client.create_subscription(10, Handler())
            await sub.subscribe_data_change(node, queuesize=100)
            await replay(rows, spec=spec, sink=OpcuaSink(server), speed=10)
            last = await node.read_data_value()
            await sub.delete()
    finally:
        await server.stop()
    assert last.Value is not None
    assert last.Value.Value == 29.0
    expected = {round(r.ts, 3): r.value for r in rows}
    good = [(ts, v) for ts, v in changes if v is not None]
    assert len(good) >= 10
    assert all(expected[round(ts, 3)] == v for ts, v in good)
