"""The simulated Modbus TCP device: a pymodbus server whose registers follow the line's samples.

Each Modbus sensor of the simulated line has a register (or bit) address, a
data type with byte and word order, and an affine scale: the device stores
``round((value - offset) / scale)`` for integer types and the value itself
for floats, as real PLCs do. The register tables live in this object; the
pymodbus server reads them through its request ``action`` hook, so a poll
always sees the newest sample.

Faults a real device shows, simulated from the sample:

* a failed sensor (``BadSensorFailure``) answers its addresses with the
  Modbus exception 4 (server device failure) until it recovers;
* a garbage sample (out of range, NaN, ±inf) writes NaN into float registers
  and the type's maximum into integer registers;
* addresses that no sensor uses answer exception 2 (illegal data address).

The wire layout is encoded here independently of the gateway's decoder (the
device side of the contract), so tests that read it through the gateway check
both against each other.
"""

from __future__ import annotations

import enum
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.sample import Sample, Status

logging.getLogger("pymodbus").setLevel(logging.WARNING)

_TABLE_SIZE: Final = 1024  # addresses 0..1023 of each table exist (others: illegal address)
_FC_TABLE: Final = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
                    16: "holding", 4: "input"}  # fmt: skip


class RegType(enum.StrEnum):
    """Register layouts the simulated device can store."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"


_PACK: Final = {
    RegType.INT16: "h",
    RegType.UINT16: "H",
    RegType.INT32: "i",
    RegType.UINT32: "I",
    RegType.FLOAT32: "f",
    RegType.FLOAT64: "d",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterMapping:
    """Where one simulated sensor sits in the device."""

    sensor: str
    table: str  # holding | input | coil | discrete
    address: int
    type: RegType
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: int = 1

    def __post_init__(self) -> None:
        if self.table not in ("holding", "input", "coil", "discrete"):
            raise ValueError(f"{self.sensor}: table must be holding, input, coil or discrete")
        if (self.table in ("coil", "discrete")) != (self.type is RegType.BOOL):
            raise ValueError(f"{self.sensor}: bit tables hold type bool, register tables numbers")
        if not 0 <= self.address < _TABLE_SIZE - 4:
            raise ValueError(f"{self.sensor}: address must be in 0..{_TABLE_SIZE - 5}")


def encode(value: float, mapping: RegisterMapping) -> list[int]:
    """The register words (or one 0/1 bit) the device stores for ``value``."""
    if mapping.type is RegType.BOOL:
        return [1 if value >= 0.5 else 0]
    fmt = _PACK[mapping.type]
    if mapping.type in (RegType.FLOAT32, RegType.FLOAT64):
        raw = struct.pack(">" + fmt, value)
    else:
        lo, hi = _int_bounds(mapping.type)
        scaled = (value - mapping.offset) / mapping.scale
        n = hi if not math.isfinite(scaled) else min(hi, max(lo, round(scaled)))
        raw = struct.pack(">" + fmt, n)
    if mapping.byte_order == "little":
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words[::-1] if mapping.word_order == "little" else words


def _int_bounds(t: RegType) -> tuple[int, int]:
    bits = 16 if t in (RegType.INT16, RegType.UINT16) else 32
    if t in (RegType.UINT16, RegType.UINT32):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


class SimModbusServer:
    """A Modbus TCP server with one device per unit id, fed by :meth:`write`."""

    def __init__(self, host: str, port: int, mappings: Sequence[RegisterMapping]) -> None:
        self.host = host
        self.port = port
        self.mappings = {m.sensor: m for m in mappings}
        units = sorted({m.unit for m in mappings}) or [1]
        self._tables: dict[tuple[int, str], dict[int, int]] = {
            (u, t): {} for u in units for t in ("holding", "input", "coil", "discrete")
        }
        self._failed: dict[tuple[int, str], set[int]] = {k: set() for k in self._tables}
        self._server: ModbusTcpServer | None = None
        self.requests = 0

    def write(self, sample: Sample) -> None:
        """Store one sample in its sensor's registers (or mark them failed)."""
        m = self.mappings[sample.sensor]
        key = (m.unit, m.table)
        span = range(m.address, m.address + len(encode(0.0, m)))
        if sample.status is Status.BAD_SENSOR_FAILURE:
            self._failed[key].update(span)
            return
        self._failed[key].difference_update(span)
        value = math.nan if sample.garbage else sample.value
        for addr, word in zip(span, encode(value, m), strict=True):
            self._tables[key][addr] = word

    async def start(self) -> None:
        """Listen on ``host:port``."""
        devices = [self._device(u) for u in sorted({u for u, _ in self._tables})]
        self._server = ModbusTcpServer(devices, address=(self.host, self.port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            server: Any = self._server  # pymodbus' shutdown() is not annotated
            await server.shutdown()
            self._server = None

    def _device(self, unit: int) -> SimDevice:
        bits = [SimData(0, count=_TABLE_SIZE, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=_TABLE_SIZE, values=0, datatype=DataType.REGISTERS)]

        async def action(*request: Any) -> ExcCodes | None:
            # pymodbus calls (function_code, start_address, address, count, registers, values)
            fc, start, address, count, regs, _values = request
            return self._serve(unit, fc, start=start, address=address, count=count, regs=regs)

        return SimDevice(id=unit, simdata=(bits, list(bits), regs, list(regs)), action=action)

    def _serve(
        self, unit: int, fc: int, *, start: int, address: int, count: int, regs: list[int]
    ) -> ExcCodes | None:
        self.requests += 1
        table = _FC_TABLE.get(fc)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        values = self._tables[(unit, table)]
        failed = self._failed[(unit, table)]
        if table in ("coil", "discrete"):
            # pymodbus keeps bit tables packed 16 bits a register, least significant bit
            # first, and passes the bit address with a count in registers: refresh the
            # whole (small) table.
            if any(address <= a < address + 16 * count for a in failed):
                return ExcCodes.DEVICE_FAILURE
            for r in range(len(regs)):
                word = 0
                for b in range(16):
                    if values.get((start + r) * 16 + b, 0):
                        word |= 1 << b
                regs[r] = word
            return None
        if any(address <= a < address + count for a in failed):
            return ExcCodes.DEVICE_FAILURE
        for a in range(address, address + count):
            regs[a - start] = values.get(a, 0)
        return None


class ModbusSink:
    """The runner's sink for Modbus sensors: every sample updates the device's registers."""

    def __init__(self, server: SimModbusServer) -> None:
        self.server = server

    @property
    def lost(self) -> int:
        """Polling never loses a queued message: a sample not read is overwritten."""
        return 0

    async def publish(self, spec: object, sample: Sample) -> None:
        """Store ``sample`` in the device."""
        self.server.write(sample)

    async def close(self) -> None:
        """Nothing is buffered."""
