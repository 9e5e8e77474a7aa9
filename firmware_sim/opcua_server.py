"""The simulated PLC: an asyncua server exposing the line's OPC-UA sensors.

Address space (namespace ``urn:tecc:sim`` by default, index ``ns``)::

    Objects/
      <line>                     Object        ns=<ns>;s=<line>
        <machine>                Object        ns=<ns>;s=<line>.<machine>
          <sensor>               AnalogItemType Variable, Double
                                               ns=<ns>;s=<line>.<machine>.<sensor>
            EURange              Property (0:EURange, ua.Range)
            EngineeringUnits     Property (0:EngineeringUnits, ua.EUInformation, UNECE)

Browse names of objects and variables are ``<ns>:<name>``. Every written value
carries the sample's simulated timestamp as SourceTimestamp. A failed sensor's
value is null with StatusCode ``BadSensorFailure`` (Part 4 §7.7.1: a Bad
value is set to null); before the first sample the status is
``BadWaitingForInitialData``.

Endpoints: security policy None and Basic256Sha256 (Sign, SignAndEncrypt) as
configured; the server certificate is self-signed and kept in the state dir.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from firmware_sim.certs import ensure_certificate
from firmware_sim.config import OpcuaSettings, SecurityMode, SensorSpec
from firmware_sim.errors import TransportError
from firmware_sim.sample import Sample, Status
from firmware_sim.units import eu_information

_POLICY = {
    SecurityMode.NONE: ua.SecurityPolicyType.NoSecurity,
    SecurityMode.SIGN: ua.SecurityPolicyType.Basic256Sha256_Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}
_STATUS = {
    Status.GOOD: StatusCodes.Good,
    Status.BAD_SENSOR_FAILURE: StatusCodes.BadSensorFailure,
}
APP_URI = "urn:tecc:sim:plc"


def std_node(identifier: int) -> ua.NodeId:
    """The NodeId of a standard (namespace 0) node such as ``ObjectIds.Double``."""
    return ua.NodeId(ua.Int32(identifier))


def string_node(name: str, ns: int) -> ua.NodeId:
    """The string NodeId ``ns=<ns>;s=<name>``."""
    return ua.NodeId(ua.String(name), ua.Int16(ns), ua.NodeIdType.String)


def status(code: int) -> ua.StatusCode:
    """A StatusCode from a ``StatusCodes`` constant."""
    return ua.StatusCode(ua.UInt32(code))


class SimOpcuaServer:
    """Owns the asyncua Server and the node of every OPC-UA sensor."""

    def __init__(self, settings: OpcuaSettings, sensors: Sequence[SensorSpec]) -> None:
        self.settings = settings
        self.sensors = list(sensors)
        self.server = Server()
        self.ns = 0
        self._nodes: dict[str, ua.NodeId] = {}

    def node_id(self, sensor_id: str) -> ua.NodeId:
        """The string NodeId of ``sensor_id`` (valid after :meth:`start`)."""
        return self._nodes[sensor_id]

    async def start(self) -> None:
        """Initialise, build the address space and listen on the endpoint."""
        s = self.settings
        server = self.server
        await server.init()
        server.set_endpoint(s.endpoint)
        server.set_server_name("tecc firmware simulator")
        await server.set_application_uri(APP_URI)
        server.set_security_policy([_POLICY[m] for m in s.security])
        if any(m is not SecurityMode.NONE for m in s.security):
            paths = ensure_certificate(
                s.state_dir, app_uri=APP_URI, common_name="tecc-sim", hosts=("localhost", s.host)
            )
            await server.load_certificate(str(paths.cert))
            await server.load_private_key(str(paths.key))
        self.ns = await server.register_namespace(s.namespace)
        await self._build()
        try:
            await server.start()
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {s.endpoint}: {exc.strerror}; pick another --opcua-port"
            ) from exc

    async def stop(self) -> None:
        """Close client sessions and stop listening."""
        await self.server.stop()

    async def _build(self) -> None:
        objects = self.server.nodes.objects
        parents: dict[str, Node] = {}
        for spec in self.sensors:
            line = parents.get(spec.line)
            if line is None:
                line = await objects.add_object(self._nid(spec.line), self._qn(spec.line))
                parents[spec.line] = line
            machine = parents.get(spec.machine_id)
            if machine is None:
                machine = await line.add_object(self._nid(spec.machine_id), self._qn(spec.machine))
                parents[spec.machine_id] = machine
            self._nodes[spec.sensor_id] = await self._add_analog_item(machine, spec)

    async def _add_analog_item(self, parent: Node, spec: SensorSpec) -> ua.NodeId:
        """Add an AnalogItemType variable with EURange and EngineeringUnits properties."""
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = self._nid(spec.sensor_id)
        item.BrowseName = self._qn(spec.name)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = parent.nodeid
        item.ReferenceTypeId = std_node(ObjectIds.HasComponent)
        item.TypeDefinition = std_node(ObjectIds.AnalogItemType)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(spec.name)
        attrs.Description = ua.LocalizedText(
            f"{spec.kind.value} sensor in {spec.unit or 'no unit'}"
        )
        attrs.DataType = std_node(ObjectIds.Double)
        attrs.Value = ua.Variant(0.0, ua.VariantType.Double)
        attrs.ValueRank = ua.ValueRank.Scalar
        attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        attrs.MinimumSamplingInterval = 1000.0 / spec.rate_hz
        item.NodeAttributes = attrs
        results: list[Any] = await parent.session.add_nodes([item])
        results[0].StatusCode.check()
        node = self.server.get_node(results[0].AddedNodeId)
        await node.add_property(
            self._nid(f"{spec.sensor_id}.EURange"),
            ua.QualifiedName("EURange", 0),
            ua.Variant(ua.Range(Low=spec.low, High=spec.high), ua.VariantType.ExtensionObject),
            datatype=std_node(ObjectIds.Range),
        )
        await node.add_property(
            self._nid(f"{spec.sensor_id}.EngineeringUnits"),
            ua.QualifiedName("EngineeringUnits", 0),
            ua.Variant(eu_information(spec.unit), ua.VariantType.ExtensionObject),
            datatype=std_node(ObjectIds.EUInformation),
        )
        waiting = ua.DataValue(
            ua.Variant(0.0, ua.VariantType.Double),
            StatusCode=status(StatusCodes.BadWaitingForInitialData),
        )
        await self.server.write_attribute_value(node.nodeid, waiting)
        return node.nodeid

    def _nid(self, name: str) -> ua.NodeId:
        return string_node(name, self.ns)

    def _qn(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self.ns)


class OpcuaSink:
    """Sink for OPC-UA sensors: writes each sample into its variable."""

    def __init__(self, server: SimOpcuaServer) -> None:
        self._server = server
        self.published = 0
        self.lost = 0

    async def publish(self, spec: SensorSpec, sample: Sample) -> None:
        """Write ``sample`` with its status code and simulated SourceTimestamp (null if Bad)."""
        good = sample.status is Status.GOOD
        value = ua.DataValue(
            ua.Variant(sample.value, ua.VariantType.Double) if good else ua.Variant(),
            StatusCode=status(_STATUS[sample.status]),
            SourceTimestamp=ua.DateTime.fromtimestamp(sample.ts, dt.UTC),
            ServerTimestamp=ua.DateTime.now(dt.UTC),
        )
        await self._server.server.write_attribute_value(self._server.node_id(spec.sensor_id), value)
        self.published += 1

    async def close(self) -> None:
        """Nothing is buffered."""
