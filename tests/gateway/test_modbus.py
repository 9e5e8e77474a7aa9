"""Modbus TCP source: register decoding, read planning, config, and a real pymodbus server."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import msgspec
import pytest
from pymodbus.exceptions import ModbusException

from demo.services import free_port
from firmware_sim.modbus_server import RegisterMapping, RegType, SimModbusServer
from firmware_sim.sample import Sample, Status
from gateway.config import SensorConfig
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.sources.modbus import ModbusSource
from gateway.sources.modbus_config import ModbusSourceConfig
from gateway.sources.registers import (
    MAX_REGISTERS_PER_READ,
    BlockDecoder,
    DataType,
    Order,
    Point,
    RegisterKind,
    decode_registers,
    plan_reads,
)
from tecc_contract.fixedpoint import SensorRange
from tests.gateway.harness import wait_for

B, L = Order.BIG, Order.LITTLE

# Hand-written layouts (not produced by any code under test): float32 1.5 is 0x3FC00000,
# int32 -2 is 0xFFFFFFFE, uint32 0x12345678, float64 1.5 is 0x3FF8000000000000.
VECTORS = [
    (DataType.INT16, B, B, [0xFFFE], -2.0),
    (DataType.INT16, L, B, [0xFEFF], -2.0),
    (DataType.UINT16, B, B, [0x1234], 4660.0),
    (DataType.UINT16, L, B, [0x3412], 4660.0),
    (DataType.INT32, B, B, [0xFFFF, 0xFFFE], -2.0),
    (DataType.INT32, B, L, [0xFFFE, 0xFFFF], -2.0),
    (DataType.UINT32, B, B, [0x1234, 0x5678], float(0x12345678)),  # ABCD
    (DataType.UINT32, B, L, [0x5678, 0x1234], float(0x12345678)),  # CDAB
    (DataType.UINT32, L, B, [0x3412, 0x7856], float(0x12345678)),  # BADC
    (DataType.UINT32, L, L, [0x7856, 0x3412], float(0x12345678)),  # DCBA
    (DataType.FLOAT32, B, B, [0x3FC0, 0x0000], 1.5),
    (DataType.FLOAT32, B, L, [0x0000, 0x3FC0], 1.5),
    (DataType.FLOAT32, L, B, [0xC03F, 0x0000], 1.5),
    (DataType.FLOAT32, L, L, [0x0000, 0xC03F], 1.5),
    (DataType.FLOAT64, B, B, [0x3FF8, 0, 0, 0], 1.5),
    (DataType.FLOAT64, B, L, [0, 0, 0, 0x3FF8], 1.5),
    (DataType.FLOAT64, L, B, [0xF83F, 0, 0, 0], 1.5),
    (DataType.BOOL, B, B, [1], 1.0),
]


@pytest.mark.parametrize(("dtype", "byte_order", "word_order", "words", "want"), VECTORS)
def test_decode_known_layouts(
    dtype: DataType, byte_order: Order, word_order: Order, words: list[int], want: float
) -> None:
    """Each type and byte/word order decodes a hand-written layout to its value."""
    assert decode_registers(words, dtype, byte_order, word_order) == want


def test_decode_float_nan_comes_through_for_validation() -> None:
    """A NaN in float registers is returned as NaN (validation rejects and counts it)."""
    assert math.isnan(decode_registers([0x7FC0, 0], DataType.FLOAT32, B, B))


def _p(sensor: str, address: int, dtype: DataType = DataType.UINT16) -> Point:
    return Point(sensor=sensor, kind=RegisterKind.HOLDING, address=address, dtype=dtype)


def test_plan_merges_contiguous_and_small_gaps_only() -> None:
    """Contiguous points share a read; a gap above max_gap starts a new one."""
    blocks = plan_reads(
        [_p("a", 0), _p("b", 1, DataType.FLOAT32), _p("c", 5), _p("d", 40)], max_gap=1
    )
    assert [(b.start, b.count, [p.sensor for p in b.points]) for b in blocks] == [
        (0, 3, ["a", "b"]),
        (5, 1, ["c"]),
        (40, 1, ["d"]),
    ]


def test_plan_respects_the_protocol_limit_and_keeps_tables_apart() -> None:
    """No block spans more than 125 registers; coils and registers never share a read."""
    pts = [_p(f"s{i}", 2 * i, DataType.FLOAT32) for i in range(100)]
    pts.append(Point(sensor="c", kind=RegisterKind.COIL, address=0, dtype=DataType.BOOL))
    blocks = plan_reads(pts, max_gap=0)
    assert all(b.count <= MAX_REGISTERS_PER_READ for b in blocks)
    assert sum(len(b.points) for b in blocks) == 101
    assert [b.kind for b in blocks].count(RegisterKind.COIL) == 1
    covered = sorted(p.sensor for b in blocks for p in b.points)
    assert covered == sorted(p.sensor for p in pts)


def test_point_refuses_type_table_mismatch_and_overflowing_address() -> None:
    """A coil must be bool, a register numeric; a float64 at 65534 would run past 65535."""
    with pytest.raises(ValueError, match="use type bool"):
        Point(sensor="x", kind=RegisterKind.COIL, address=0, dtype=DataType.INT16)
    with pytest.raises(ValueError, match="numeric"):
        Point(sensor="x", kind=RegisterKind.INPUT, address=0, dtype=DataType.BOOL)
    with pytest.raises(ValueError, match="does not fit"):
        _p("x", 65534, DataType.FLOAT64)


def _cfg(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "groups": [{"points": [{"sensor": "s", "kind": "holding", "address": 0, "type": "int16"}]}],
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("over", "where"),
    [
        ({"prot": 502}, "prot"),
        ({"port": True}, "port"),
        ({"port": "502"}, "port"),
        ({"port": 70000}, "port"),
        (
            {
                "groups": [
                    {"points": [{"sensor": "s", "kind": "coil", "address": 0, "type": "int16"}]}
                ]
            },
            "bool",
        ),
        (
            {
                "groups": [
                    {"points": [{"sensor": "s", "kind": "holding", "address": 0, "type": "int128"}]}
                ]
            },
            "type",
        ),
    ],
)
def test_config_errors_name_the_key(over: dict[str, object], where: str) -> None:
    """Unknown keys, coerced types, out-of-range and mismatched values are refused by name."""
    with pytest.raises(msgspec.ValidationError, match=where):
        msgspec.convert(_cfg(**over), ModbusSourceConfig, strict=True)


# -- against a real pymodbus server --------------------------------------------------------

LAYOUTS = [
    (t, bo, wo)
    for t in (
        RegType.INT16,
        RegType.UINT16,
        RegType.INT32,
        RegType.UINT32,
        RegType.FLOAT32,
        RegType.FLOAT64,
    )
    for bo in ("big", "little")
    for wo in (("big", "little") if t not in (RegType.INT16, RegType.UINT16) else ("big",))
]


def _mapping(i: int, t: RegType, bo: str, wo: str) -> RegisterMapping:
    scale = 0.01 if t in (RegType.INT16, RegType.INT32) else 1.0
    return RegisterMapping(
        sensor=f"m.{t}.{bo}.{wo}",
        table="holding" if i % 2 else "input",
        address=8 * i,
        type=t,
        byte_order=bo,
        word_order=wo,
        scale=scale,
        offset=-5.0 if scale != 1.0 else 0.0,
    )


def _source_cfg(
    port: int, mappings: list[RegisterMapping], extra: tuple[dict[str, object], ...] = ()
) -> ModbusSourceConfig:
    points: list[dict[str, object]] = [
        {
            "sensor": m.sensor,
            "kind": m.table,
            "address": m.address,
            "type": m.type.value,
            "byte_order": m.byte_order,
            "word_order": m.word_order,
            "scale": m.scale,
            "offset": m.offset,
        }
        for m in mappings
    ]
    points.extend(extra)
    raw = {
        "name": "plc",
        "host": "127.0.0.1",
        "port": port,
        "timeout_s": 0.5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "groups": [{"unit": 1, "interval_ms": 50, "points": points}],
    }
    return msgspec.convert(raw, ModbusSourceConfig, strict=True)


def _ingest(sensors: list[str]) -> Ingest:
    return Ingest({s: SensorConfig(id=s, range=SensorRange(-1e6, 1e7), unit="") for s in sensors})


@contextlib.asynccontextmanager
async def _polling(source: ModbusSource) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _latest(ingest: Ingest, collected: dict[str, float]) -> dict[str, float]:
    d = ingest.drain()
    collected.update(zip(d.sensors, d.values, strict=True))
    return collected


async def test_every_type_and_order_round_trips_through_a_real_server() -> None:
    """Values stored by the simulated device come back through pymodbus and the decoder."""
    port = free_port()
    mappings = [_mapping(i, *layout) for i, layout in enumerate(LAYOUTS)]
    mappings.append(RegisterMapping(sensor="m.coil", table="coil", address=3, type=RegType.BOOL))
    mappings.append(RegisterMapping(sensor="m.di", table="discrete", address=17, type=RegType.BOOL))
    server = SimModbusServer("127.0.0.1", port, mappings)
    want: dict[str, float] = {}
    for i, m in enumerate(mappings):
        if m.type is RegType.BOOL:
            v = 1.0
        elif m.type in (RegType.UINT16, RegType.UINT32):
            v = 600.0 + i  # unscaled integers
        elif m.type in (RegType.INT16, RegType.INT32):
            v = -(123.25 + i) / 4  # scale 0.01, offset -5
        else:
            v = 123.25 + i
        want[m.sensor] = v
        server.write(Sample(sensor=m.sensor, seq=0, ts=0.0, value=v))
    await server.start()
    ingest = _ingest(list(want))
    source = ModbusSource(_source_cfg(port, mappings), ingest, Metrics(ingest))
    got: dict[str, float] = {}
    try:
        async with _polling(source):
            await wait_for(lambda: len(_latest(ingest, got)) == len(want), 10, "every sensor")
    finally:
        await server.stop()
    for sensor, v in want.items():
        tol = 0.006 if sensor.split(".")[1] in ("int16", "int32") else 1e-5 * abs(v)
        assert got[sensor] == pytest.approx(v, abs=tol), sensor
    assert not ingest.rejected


async def test_exception_responses_are_counted_and_other_blocks_still_flow() -> None:
    """An illegal address and a failed sensor answer exceptions: counted, nothing crashes."""
    port = free_port()
    good = RegisterMapping(sensor="ok", table="holding", address=0, type=RegType.UINT16)
    failing = RegisterMapping(sensor="failing", table="holding", address=100, type=RegType.UINT16)
    server = SimModbusServer("127.0.0.1", port, [good, failing])
    server.write(Sample(sensor="ok", seq=0, ts=0.0, value=7.0))
    server.write(
        Sample(sensor="failing", seq=0, ts=0.0, value=0.0, status=Status.BAD_SENSOR_FAILURE)
    )
    await server.start()
    beyond = {"sensor": "beyond", "kind": "holding", "address": 5000, "type": "uint16"}
    ingest = _ingest(["ok", "failing", "beyond"])
    source = ModbusSource(_source_cfg(port, [good, failing], (beyond,)), ingest, Metrics(ingest))
    got: dict[str, float] = {}
    try:
        async with _polling(source):
            await wait_for(
                lambda: (
                    ingest.rejected[("beyond", "device_exception")] >= 3
                    and ingest.rejected[("failing", "device_exception")] >= 3
                ),
                10,
                "exceptions counted",
            )
            _latest(ingest, got)
            server.write(Sample(sensor="failing", seq=1, ts=0.0, value=9.0))
            await wait_for(lambda: _latest(ingest, got).get("failing") == 9.0, 10, "recovery")
    finally:
        await server.stop()
    assert got["ok"] == 7.0
    assert "beyond" not in got
    assert source.connected is False


async def test_server_restart_resumes_within_the_backoff_bound() -> None:
    """After a 2 s outage polling resumes within reconnect_max_s; polls before and after land."""
    port = free_port()
    m = RegisterMapping(sensor="v", table="holding", address=0, type=RegType.UINT16)
    server = SimModbusServer("127.0.0.1", port, [m])
    server.write(Sample(sensor="v", seq=0, ts=0.0, value=1.0))
    await server.start()
    ingest = _ingest(["v"])
    metrics = Metrics(ingest)
    source = ModbusSource(_source_cfg(port, [m]), ingest, metrics)
    got: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    async with _polling(source):
        await wait_for(lambda: _latest(ingest, got).get("v") == 1.0, 10, "first value")
        await server.stop()
        await wait_for(lambda: not source.connected, 10, "loss detected")
        await asyncio.sleep(2.0)
        server2 = SimModbusServer("127.0.0.1", port, [m])
        server2.write(Sample(sensor="v", seq=1, ts=0.0, value=2.0))
        await server2.start()
        back = loop.time()
        try:
            await wait_for(lambda: _latest(ingest, got).get("v") == 2.0, 10, "value after restart")
            resumed_after = loop.time() - back
        finally:
            await server2.stop()
    assert resumed_after <= source.cfg.reconnect_max_s + 0.5


def test_block_decoder_equals_the_reference_decoder_for_mixed_layouts() -> None:
    """The fast per-block decoder gives what decode_registers gives, for every layout mixed."""
    points, words, addr = [], [], 0
    for dtype, byte_order, word_order, layout, _ in VECTORS:
        if dtype is DataType.BOOL:
            continue
        points.append(
            Point(
                sensor=f"s{addr}",
                kind=RegisterKind.HOLDING,
                address=addr,
                dtype=dtype,
                byte_order=byte_order,
                word_order=word_order,
                scale=0.5,
                offset=1.0,
            )
        )
        words += layout
        addr += len(layout)
    (block,) = plan_reads(points, max_gap=0)
    got = dict(BlockDecoder(block).decode(words))
    for p in points:
        i = p.address
        ref = decode_registers(
            words[i : i + p.dtype.registers], p.dtype, p.byte_order, p.word_order
        )
        assert got[p.sensor] == ref * 0.5 + 1.0, p


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize(
    "dtype",
    [
        DataType.INT16,
        DataType.UINT16,
        DataType.INT32,
        DataType.UINT32,
        DataType.FLOAT32,
        DataType.FLOAT64,
    ],
)
def test_block_decoder_whole_block_path_equals_the_reference(dtype: DataType, scaled: bool) -> None:
    """Back-to-back points of one type (one unpack per block) decode like decode_registers."""
    width = dtype.registers
    points = [
        Point(
            sensor=f"s{k}",
            kind=RegisterKind.INPUT,
            address=10 + k * width,
            dtype=dtype,
            scale=0.25 if scaled else 1.0,
            offset=-3.0 if scaled else 0.0,
        )
        for k in range(7)
    ]
    words = [(0x8001 + 0x1F3 * i) % 0x10000 for i in range(7 * width)]
    (block,) = plan_reads(points, max_gap=0)
    sensors, got = BlockDecoder(block).decode_columns(words)
    assert sensors == tuple(p.sensor for p in points)
    for p, value in zip(points, got, strict=True):
        i = p.address - 10
        ref = decode_registers(words[i : i + width], dtype, Order.BIG, Order.BIG)
        want = ref * p.scale + p.offset
        assert value == want or (math.isnan(value) and math.isnan(want)), (p, value, want)


async def test_a_cancel_that_surfaces_as_a_modbus_error_still_stops_the_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled mid-request, pymodbus may raise its own error instead of CancelledError.

    Fails on the code before this change: the source took that error for a
    lost device, reconnected, and never stopped (the bench's Modbus part hung
    with the readings piling up, and the agent's shutdown would wait forever).
    """
    point = {"sensor": "p", "kind": "holding", "address": 0, "type": "int16"}
    cfg = msgspec.convert(
        {
            "host": "127.0.0.1",
            "port": 1,
            "reconnect_min_s": 0.01,
            "reconnect_max_s": 0.02,
            "groups": [{"points": [point]}],
        },
        ModbusSourceConfig,
        strict=True,
    )
    ingest = Ingest({"p": SensorConfig(id="p", range=SensorRange(0, 100), unit="")})
    source = ModbusSource(cfg, ingest, Metrics(ingest))
    sessions = 0
    over = False

    async def session() -> None:  # a request in flight that turns the cancel into an error
        nonlocal sessions
        sessions += 1
        if over:
            raise RuntimeError("test over")  # ends a source that ignored the cancel
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ModbusException("request cancelled") from None

    monkeypatch.setattr(source, "_session", session)
    task = asyncio.create_task(source.run())
    await wait_for(lambda: sessions == 1, 5, "the first session")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:
        over = True
        task.cancel()  # wakes the next session, which then ends the task
        with contextlib.suppress(BaseException):
            await task
    assert done, "the source reconnected instead of stopping"
    assert task.cancelled()
    assert sessions == 1, "the source reconnected instead of stopping"
