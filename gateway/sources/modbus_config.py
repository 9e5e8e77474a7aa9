"""Configuration of a Modbus TCP source (``sources.modbus`` in the gateway config).

Typed msgspec structs: unknown keys, wrong types and out-of-range values are
errors that name the key. Example::

    sources:
      modbus:
        - name: press-plc
          host: 192.0.2.10          # the PLC or Modbus gateway
          port: 502
          timeout_s: 1.0
          groups:
            - unit: 1               # Modbus unit (device) id
              interval_ms: 500      # poll period of this group
              points:
                - {sensor: press.oil_temp, kind: input, address: 0, type: int16, scale: 0.1}
                - {sensor: press.pressure, kind: holding, address: 100, type: float32,
                   word_order: little}
                - {sensor: press.door_open, kind: discrete, address: 3, type: bool}

Addresses are the 0-based protocol addresses (register 40101 in the
"Modicon" notation is holding address 100).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.sources.registers import DataType, Order, Point, RegisterKind


class ModbusPointConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One sensor's value in the device's register map."""

    sensor: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kind: RegisterKind
    address: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    type: DataType
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0

    def point(self) -> Point:
        """The pure register-map point (checks kind/type agreement and the address span)."""
        return Point(
            sensor=self.sensor,
            kind=self.kind,
            address=self.address,
            dtype=self.type,
            byte_order=self.byte_order,
            word_order=self.word_order,
            scale=self.scale,
            offset=self.offset,
        )


class ModbusGroupConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Points of one unit polled together at one interval."""

    unit: Annotated[int, msgspec.Meta(ge=0, le=255)] = 1
    interval_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 1000
    max_gap: Annotated[int, msgspec.Meta(ge=0, le=100)] = 8
    points: Annotated[tuple[ModbusPointConfig, ...], msgspec.Meta(min_length=1)]


class ModbusSourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One Modbus TCP server (a PLC, or a serial-to-TCP gateway for several units)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "modbus"
    host: Annotated[str, msgspec.Meta(min_length=1)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 502
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    reconnect_min_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.2
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    groups: Annotated[tuple[ModbusGroupConfig, ...], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        for g in self.groups:
            for p in g.points:
                p.point()  # raises ValueError naming the sensor

    def sensors(self) -> set[str]:
        """Every sensor id this source feeds."""
        return {p.sensor for g in self.groups for p in g.points}
