"""The simulator's plant transports: a Modbus TCP device and Sparkplug B edge nodes.

Sensors with ``transport: modbus`` live in the registers of one simulated
device (:class:`~firmware_sim.modbus_server.SimModbusServer`), laid out by
:func:`modbus_mappings` from the ``modbus`` section. Sensors with
``transport: sparkplug`` are metrics of one Sparkplug B edge node per machine
(:class:`~firmware_sim.sparkplug_node.SparkplugLink` on the ``mqtt`` broker):
group = line, edge node = machine, metric = sensor name, so the gateway's
``sensor_template: "{group}.{node}.{metric}"`` yields the sensor id
``<line>.<machine>.<sensor>``. Each sample is one NDATA message (by alias,
with its simulated timestamp); a failed sensor sends its metric with
``is_null`` (the gateway counts ``bad_status``), a garbage sample its
invalid value.
"""

from __future__ import annotations

import contextlib

import aiomqtt

from firmware_sim.config import SensorSpec, SimConfig, Transport
from firmware_sim.errors import SimConfigError
from firmware_sim.modbus_server import RegisterMapping, RegType
from firmware_sim.sample import Sample, Status
from firmware_sim.sparkplug_node import NS, EdgeNode, SparkplugLink

_WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
_INT_MAX = {"int16": 2**15 - 1, "uint16": 2**16 - 1, "int32": 2**31 - 1, "uint32": 2**32 - 1}
_TABLE_END = 1020  # the device's tables hold addresses 0..1023 (a float64 needs 4)


def modbus_mappings(config: SimConfig) -> list[RegisterMapping]:
    """Where each Modbus sensor sits in the device (config order, consecutive addresses)."""
    m = config.modbus
    out: list[RegisterMapping] = []
    address = m.base_address
    for spec in config.sensors(Transport.MODBUS):
        if address + _WORDS[m.type] > _TABLE_END:
            raise SimConfigError(
                f"modbus: {len(config.sensors(Transport.MODBUS))} sensors of type {m.type} from "
                f"modbus.base_address {m.base_address} do not fit the device's {_TABLE_END} "
                "registers; lower modbus.base_address or move sensors to another transport"
            )
        top = max(abs(spec.low), abs(spec.high)) / m.scale
        if m.type in _INT_MAX and (top > _INT_MAX[m.type] or (m.type[0] == "u" and spec.low < 0)):
            raise SimConfigError(
                f"modbus.scale: {spec.sensor_id}'s range [{spec.low:g}, {spec.high:g}] does not "
                f"fit modbus.type {m.type} at scale {m.scale:g}; write a larger scale or a "
                "wider (or signed) type"
            )
        out.append(
            RegisterMapping(
                sensor=spec.sensor_id,
                table=m.table,
                address=address,
                type=RegType(m.type),
                byte_order=m.byte_order,
                word_order=m.word_order,
                scale=m.scale if m.type in _INT_MAX else 1.0,
                unit=m.unit,
            )
        )
        address += _WORDS[m.type]
    return out


def describe_modbus(config: SimConfig) -> dict[str, dict[str, object]]:
    """Per Modbus sensor id, what a gateway's ``sources.modbus`` point needs."""
    m = config.modbus
    return {
        r.sensor: {
            "endpoint": f"{m.host}:{m.port}",
            "unit_id": r.unit,
            "table": r.table,
            "address": r.address,
            "type": r.type.value,
            "byte_order": r.byte_order,
            "word_order": r.word_order,
            "scale": r.scale,
        }
        for r in modbus_mappings(config)
    }


def sparkplug_filter(spec: SensorSpec) -> str:
    """The MQTT topic filter of ``spec``'s edge node (every message type of the node)."""
    return f"{NS}/{spec.line}/+/{spec.machine}/#"


class SparkplugSink:
    """The runner's sink for Sparkplug sensors: one edge node per machine, one NDATA per sample."""

    def __init__(self, config: SimConfig) -> None:
        by_machine: dict[str, list[str]] = {}
        for spec in config.sensors(Transport.SPARKPLUG):
            by_machine.setdefault(spec.machine, []).append(spec.name)
        self.links = {
            machine: SparkplugLink(
                EdgeNode(group=config.line, node=machine, node_metrics=tuple(names)),
                config.mqtt.host,
                config.mqtt.port,
            )
            for machine, names in by_machine.items()
        }
        self.published = 0
        self.lost = 0

    async def start(self) -> None:
        """Connect every edge node and publish its birth certificate."""
        for link in self.links.values():
            await link.start()

    async def publish(self, spec: SensorSpec, sample: Sample) -> None:
        """One NDATA message with this sample's metric (null for a failed sensor)."""
        # a garbage sample keeps its invalid value (out of range, NaN, ±inf): the
        # gateway must reject it
        value = None if sample.status is Status.BAD_SENSOR_FAILURE else sample.value
        try:
            await self.links[spec.machine].publish_data("", [(spec.name, sample.ts, value)])
        except aiomqtt.MqttError:  # the broker went away: lost, like any MQTT sensor
            self.lost += 1
            return
        self.published += 1

    async def close(self) -> None:
        """Publish every node's NDEATH and disconnect."""
        for link in self.links.values():
            with contextlib.suppress(Exception):
                await link.stop()
