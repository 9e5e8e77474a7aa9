"""Replay mode: a CSV becomes a sensor on a real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from asyncua.client.client import Client

from demo.services import free_port
from firmware_sim.cli import main
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
from firmware_sim.replay import (
    NUDGE_S,
    Disorder,
    ReplayRow,
    Timing,
    parse_timestamp,
    read_csv,
    replay,
    timeline,
)
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
        "timestamp,value\n1764230400.0,1.5\n2025-11-27T08:00:01Z,2.5\n2025-11-27 08:00:02.5,3\n"
    )
    assert read_csv(path).rows == [
        ReplayRow(START, 1.5),
        ReplayRow(START + 1, 2.5),
        ReplayRow(START + 2.5, 3.0),
    ]
    assert parse_timestamp("2025-11-27T09:00:00+01:00") == START


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0,2.0\n0.5,3.0\n", r"rec.csv:2: timestamp '0.5' goes backwards; pass --on-disorder"),
        ("1.0,2.0\n1.0,3.0\n", r"rec.csv:2: timestamp '1.0' repeats the previous one"),
        ("1.0,abc\n", r"rec.csv:1: bad value 'abc'"),
        ("yesterday,1\n", r"rec.csv:1: bad timestamp 'yesterday'"),
        ("1.0,2.0,3.0\n", r"rec.csv:1: expected 'timestamp,value', got 3 fields"),
        ("timestamp,value\n", r"has no data rows"),
        ("time,a,b\n1,2,3\n", r"rec.csv:1: 3 columns and none named 'value': choose one with"),
        ("t,v\n1,2\n1,\n", r"rec.csv:3: bad value ''"),
    ],
)
def test_bad_csv_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    """Malformed rows fail with file and line number."""
    path = tmp_path / "rec.csv"
    path.write_text(text)
    with pytest.raises(ReplayError, match=message):
        read_csv(path)


# A naive-local recording across the autumn daylight-saving change (01:00-01:59 twice),
# one duplicated row and one row out of order, as real exports have them.
DISORDERED = """timestamp,value
2013-11-03 00:50:00,1
2013-11-03 00:55:00,2
2013-11-03 01:00:00,3
2013-11-03 01:05:00,4
2013-11-03 01:00:00,5
2013-11-03 01:05:00,6
2013-11-03 01:10:00,7
2013-11-03 01:10:00,8
2013-11-03 01:20:00,9
2013-11-03 01:15:00,10
2013-11-03 01:25:00,11
"""


def test_disorder_reject_names_the_first_bad_line(tmp_path: Path) -> None:
    """``reject`` fails at the first stamp that does not move forward, with its line."""
    path = tmp_path / "dst.csv"
    path.write_text(DISORDERED)
    with pytest.raises(ReplayError, match=r"dst.csv:6: timestamp '2013-11-03 01:00:00' goes back"):
        read_csv(path, on_disorder=Disorder.REJECT)


def test_disorder_keep_keeps_file_order_and_strictly_increasing_stamps(tmp_path: Path) -> None:
    """``keep``: every row in file order, each stamp NUDGE_S past a non-advancing predecessor."""
    path = tmp_path / "dst.csv"
    path.write_text(DISORDERED)
    rec = read_csv(path, on_disorder=Disorder.KEEP)
    base = parse_timestamp("2013-11-03 01:05:00")
    assert [r.value for r in rec.rows] == [float(v) for v in range(1, 12)]
    stamps = [r.ts for r in rec.rows]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert stamps[4:6] == pytest.approx([base + NUDGE_S, base + 2 * NUDGE_S], abs=1e-6)
    assert stamps[6] == parse_timestamp("2013-11-03 01:10:00")
    assert stamps[7] == pytest.approx(stamps[6] + NUDGE_S, abs=1e-6)  # the duplicate
    assert stamps[9] == pytest.approx(stamps[8] + NUDGE_S, abs=1e-6)  # the backwards row
    assert (rec.repeated, rec.backwards, rec.first_nudged_line) == (1, 3, 6)
    assert "1 repeated and 3 backwards stamps moved forward by 1 ms (first at line 6)" in (
        rec.describe()
    )


def test_columns_by_header_name(tmp_path: Path) -> None:
    """``time_column``/``value_column`` pick columns of a wider file; unknown names are refused."""
    path = tmp_path / "wide.csv"
    path.write_text("id,Value,when,temp\n7,1.0,100,20.5\n8,2.0,101,21.5\n")
    rec = read_csv(path, time_column="when", value_column="temp")
    assert rec.rows == [ReplayRow(100.0, 20.5), ReplayRow(101.0, 21.5)]
    assert read_csv(path, time_column="when").rows[1] == ReplayRow(101.0, 2.0)
    with pytest.raises(ReplayError, match=r"wide.csv:1: no column 'pressure' for --column"):
        read_csv(path, time_column="when", value_column="pressure")


def test_timeline_recorded_keeps_stamps_and_divides_the_spacing() -> None:
    """Recorded stamps unchanged; due times are the recorded offsets over ``speed``."""
    rows = [ReplayRow(START + 300 * k, float(k)) for k in range(5)]
    slots = timeline(rows, timing=Timing.RECORDED, speed=600)
    assert [s.ts for s in slots] == [r.ts for r in rows]
    assert [s.due_s for s in slots] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert {s.due_s for s in timeline(rows, speed=math.inf)} == {0.0}


def test_timeline_rebase_and_respace_follow_the_replay_clock() -> None:
    """Live stamps = start + due: a 79-day recording ends minutes, not days, after the start.

    Fails on the code before this change: ``--rebase`` kept the recorded
    5-minute spacing, so the last stamp lay 78 days ahead.
    """
    rows = [ReplayRow(1_385_000_000.0 + 300 * k, float(k)) for k in range(22_695)]
    base = 1_764_230_400.0
    rebased = timeline(rows, timing=Timing.REBASE, speed=30_000, base=base)
    assert all(s.ts == base + s.due_s for s in rebased)
    assert rebased[-1].ts - base == pytest.approx(22_694 * 300 / 30_000)
    respaced = timeline(rows, timing=Timing.RESPACE, respace_s=0.01, base=base)
    assert [s.ts for s in respaced[:3]] == [base, base + 0.01, base + 0.02]
    assert respaced[-1].due_s == pytest.approx(226.94)
    assert [s.value for s in respaced] == [r.value for r in rows]


def test_timeline_keeps_compressed_stamps_apart() -> None:
    """A spacing compressed below NUDGE_S is widened, so stamps stay distinct and ordered."""
    rows = [ReplayRow(START + k * 0.5, 1.0) for k in range(4)]
    slots = timeline(rows, timing=Timing.REBASE, speed=10_000, base=START)
    assert [s.ts - START for s in slots] == pytest.approx(
        [0, NUDGE_S, 2 * NUDGE_S, 3 * NUDGE_S], abs=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speed": 0.0}, r"--speed must be > 0"),
        ({"timing": Timing.RESPACE, "respace_s": 0.0}, r"--respace must be at least 0.001"),
    ],
)
def test_timeline_refuses_bad_timing(kwargs: dict[str, Any], message: str) -> None:
    """A zero speed or spacing is an error naming the option."""
    with pytest.raises(ReplayError, match=message):
        timeline([ReplayRow(START, 1.0)], **kwargs)


@pytest.mark.mqtt
async def test_replay_publishes_rows_in_order_accelerated(broker: Broker) -> None:
    """Rows arrive with their values and timestamps; rebase stamps them with the replay clock."""
    rows = [ReplayRow(START + i * 0.5, float(i % 7)) for i in range(40)]
    settings = mqtt_settings(MqttDoc(host=broker.host, port=broker.port, client_id="replay-test"))
    async with Collector(broker.host, broker.port, "site/#") as collector:
        link = MqttLink(settings)
        await link.connect()
        try:
            sink = MqttSink(link)
            count = await replay(rows, spec=SPEC, sink=sink, speed=100)
            await replay(
                rows, spec=SPEC, sink=sink, speed=100, timing=Timing.REBASE, wall=lambda: 7200.0
            )
        finally:
            await link.close()
        await collector.wait_for(2 * count)
    got = [json.loads(p) for p in collector.received.payloads["site/l1/rec/flow"]]
    assert count == 40
    assert [(g["ts"], g["value"]) for g in got[:40]] == [(r.ts, r.value) for r in rows]
    assert [g["ts"] for g in got[40:]] == pytest.approx([7200.0 + i * 0.005 for i in range(40)])


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


@pytest.mark.mqtt
async def test_replay_command_keeps_disorder_and_respaces_onto_the_wall_clock(
    broker: Broker, tmp_path: Path
) -> None:
    """``tecc-sim replay --on-disorder keep --respace``: all rows, in order, stamped now."""
    path = tmp_path / "dst.csv"
    path.write_text(DISORDERED)
    argv = ["replay", "--csv", str(path), "--sensor", "l9.rec.temp", "--on-disorder", "keep"]
    argv += ["--respace", "0.01", "--mqtt-port", str(broker.port), "--payload", "json"]
    assert await asyncio.to_thread(main, [*argv[:5], "--mqtt-port", str(broker.port)]) == 2
    async with Collector(broker.host, broker.port, "site/#") as collector:
        before = time.time()
        assert await asyncio.to_thread(main, argv) == 0
        after = time.time()
        await collector.wait_for(11)
    got = collector.received.json_readings("site/l9/rec/temp")
    assert [g["value"] for g in got] == [float(v) for v in range(1, 12)]
    stamps = [ts for g in got if isinstance(ts := g["ts"], float)]
    assert len(stamps) == 11
    assert all(b - a == pytest.approx(0.01, abs=1e-6) for a, b in itertools.pairwise(stamps))
    assert before <= stamps[0]
    assert stamps[-1] <= after
