"""The simulated PLC with a real asyncua client: address space, values, status codes, security."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from demo.services import free_port
from firmware_sim.certs import ensure_certificate
from firmware_sim.clock import SimClock
from firmware_sim.config import SecurityMode, SimConfig, Transport
from firmware_sim.config_yaml import load_config
from firmware_sim.groundtruth import GroundTruthWriter, read_ground_truth
from firmware_sim.line import simulate
from firmware_sim.opcua_server import OpcuaSink, SimOpcuaServer
from firmware_sim.runner import run_line
from firmware_sim.units import unit_id
from tests.sim.simhelpers import START, ConfigFactory

pytestmark = pytest.mark.opcua

LINE = """
line: l1
seed: 5
machines:
  - name: m1
    transport: opcua
    fixed_state: load
    sensors:
      - {{name: current, kind: current, unit: A, range: [0, 120]}}
      - {{name: temp, kind: temperature, unit: "°C", range: [0, 150]}}
opcua: {{port: {port}, state_dir: {state}, security: [none]}}
scenario:
  anomalies:
    - {{kind: sensor_failure, sensor: l1.m1.temp, start_s: 6, duration_s: 100}}
    - {{kind: spike, sensor: l1.m1.current, start_s: 2, magnitude: 20}}
"""


async def started(config: SimConfig) -> SimOpcuaServer:
    """A running simulated PLC serving the OPC-UA sensors of ``config``."""
    server = SimOpcuaServer(config.opcua, config.sensors(Transport.OPCUA))
    await server.start()
    return server


@pytest.fixture
def shipped(tmp_path: Path) -> SimConfig:
    """configs/sim.yaml on a free port with all three security modes."""
    config = load_config(Path("configs/sim.yaml"))
    opcua = dataclasses.replace(config.opcua, port=free_port(), state_dir=tmp_path / "pki")
    return config.with_changes(opcua=opcua)


async def test_address_space_browses_as_documented(shipped: SimConfig) -> None:
    """Objects/line1/<machine>/<sensor>: AnalogItemType Doubles with EURange and units."""
    server = await started(shipped)
    try:
        async with Client(shipped.opcua.endpoint, timeout=30) as client:
            ns = await client.get_namespace_index("urn:tecc:sim")
            line = await client.nodes.objects.get_child(f"{ns}:line1")
            assert line.nodeid == ua.NodeId(ua.String("line1"), ua.Int16(ns))
            machines = {(await m.read_browse_name()).Name for m in await line.get_children()}
            assert machines == {"press1", "mill1"}
            mill = await line.get_child(f"{ns}:mill1")
            sensors = {(await s.read_browse_name()).Name for s in await mill.get_children()}
            assert sensors == {
                "bearing_temp",
                "hydraulic_pressure",
                "motor_current",
                "spindle_speed",
            }
            for spec in shipped.sensors(Transport.OPCUA):
                node = client.get_node(f"ns={ns};s={spec.sensor_id}")
                path = [f"{ns}:{spec.line}", f"{ns}:{spec.machine}", f"{ns}:{spec.name}"]
                assert (await client.nodes.objects.get_child(path)).nodeid == node.nodeid
                typedef = await node.read_type_definition()
                assert typedef == ua.NodeId(ua.Int32(ObjectIds.AnalogItemType))
                datatype = await node.read_data_type()
                assert datatype == ua.NodeId(ua.Int32(ObjectIds.Double))
                eu_range = await (await node.get_child("0:EURange")).read_value()
                assert (eu_range.Low, eu_range.High) == (spec.low, spec.high)
                units = await (await node.get_child("0:EngineeringUnits")).read_value()
                assert units.DisplayName.Text == spec.unit
                assert units.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
                first = await node.read_data_value(raise_on_bad_status=False)
                assert first.StatusCode is not None
                assert first.StatusCode.value == StatusCodes.BadWaitingForInitialData
            temp = client.get_node(f"ns={ns};s=line1.press1.bearing_temp")
            units = await (await temp.get_child("0:EngineeringUnits")).read_value()
            assert units.UnitId == unit_id("CEL") == 4408652
    finally:
        await server.stop()


async def test_endpoints_offer_none_and_basic256sha256(shipped: SimConfig, tmp_path: Path) -> None:
    """Discovery lists None plus Basic256Sha256 Sign and SignAndEncrypt; a secure session reads."""
    server = await started(shipped)
    try:
        probe = Client(shipped.opcua.endpoint, timeout=30)
        endpoints = await probe.connect_and_get_server_endpoints()
        offered = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
        assert offered == {
            ("None", ua.MessageSecurityMode.None_),
            ("Basic256Sha256", ua.MessageSecurityMode.Sign),
            ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
        }
        app_uri = "urn:tecc:test:client"
        paths = ensure_certificate(
            tmp_path / "client", app_uri=app_uri, common_name="test-client", stem="client"
        )
        client = Client(shipped.opcua.endpoint, timeout=30)
        client.application_uri = app_uri
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{paths.cert},{paths.key}")
        async with client:
            ns = await client.get_namespace_index("urn:tecc:sim")
            node = client.get_node(f"ns={ns};s=line1.press1.hydraulic_pressure")
            assert (await node.read_browse_name()).Name == "hydraulic_pressure"
    finally:
        await server.stop()
    assert SecurityMode.SIGN_AND_ENCRYPT in shipped.opcua.security


class Changes:
    """Collects data-change notifications as (sensor id, DataValue)."""

    def __init__(self) -> None:
        self.values: list[tuple[str, ua.DataValue]] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        """asyncua subscription callback."""
        self.values.append((str(node.nodeid.Identifier), data.monitored_item.Value))


async def test_values_follow_the_model_and_failures_are_bad(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """Subscribed values equal the model at their SourceTimestamp; a failed sensor reads Bad."""
    config = make_config(LINE.format(port=free_port(), state=tmp_path / "pki"))
    server = await started(config)
    changes = Changes()
    try:
        async with Client(config.opcua.endpoint, timeout=30) as client:
            ns = await client.get_namespace_index("urn:tecc:sim")
            nodes = [client.get_node(f"ns={ns};s={s.sensor_id}") for s in config.sensors()]
            sub = await client.create_subscription(20, changes)
            await sub.subscribe_data_change(nodes, queuesize=1000)
            with GroundTruthWriter(tmp_path / "gt.jsonl") as writer:
                await run_line(
                    config,
                    sinks={Transport.OPCUA: OpcuaSink(server)},
                    groundtruth=writer,
                    clock=SimClock(START, speed=20),
                    duration_s=10,
                )
            temp = await nodes[1].read_data_value(raise_on_bad_status=False)
            current = await nodes[0].read_data_value(raise_on_bad_status=False)
            await sub.delete()
    finally:
        await server.stop()

    offline = simulate(config, start=START, duration_s=10)
    assert temp.StatusCode is not None
    assert temp.StatusCode.value == StatusCodes.BadSensorFailure
    assert current.StatusCode is not None
    assert current.StatusCode.is_good()
    last = offline.samples["l1.m1.current"][-1]
    assert current.Value is not None
    assert current.Value.Value == last.value
    assert current.SourceTimestamp is not None
    assert current.SourceTimestamp.timestamp() == pytest.approx(last.ts, abs=1e-6)

    truth = read_ground_truth(tmp_path / "gt.jsonl")
    failure = next(r for r in truth if r.kind == "sensor_failure")
    by_slot = {
        (s.sensor, round((s.ts - START) * 10)): s for v in offline.samples.values() for s in v
    }
    matched = bad = 0
    for sensor, value in changes.values:
        if value.SourceTimestamp is None:
            continue
        ts = value.SourceTimestamp.timestamp()
        sample = by_slot[(sensor, round((ts - START) * 10))]
        assert value.Value is not None
        assert value.StatusCode is not None
        is_bad = value.StatusCode.value == StatusCodes.BadSensorFailure
        assert value.Value.Value == (None if is_bad else sample.value)
        assert is_bad == failure.covers(sensor, sample.ts)
        matched += 1
        bad += is_bad
    assert matched > 50
    assert bad > 0
