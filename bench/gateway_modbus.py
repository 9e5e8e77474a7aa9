"""Modbus part of ``bench.gateway``: the gateway's Modbus source against a bare pymodbus client.

The simulated device (:class:`firmware_sim.modbus_server.SimModbusServer`)
runs in a child process with ``N_POINTS`` float32 holding registers (two
registers each, so 8 block reads of 125 registers per cycle). Both sides poll
as fast as the device answers, one request in flight, over the same window:

* baseline: a bare :class:`pymodbus.client.AsyncModbusTcpClient` reading the
  same blocks in a loop; its figure is registers read per second / 2. It is
  reported twice: as received (``baseline_pymodbus_values_per_s``, the
  ratio ``modbus_ratio_vs_pymodbus``) and decoding each block's float32s
  with ``struct`` (``baseline_pymodbus_decoded_values_per_s``,
  ``modbus_ratio_vs_pymodbus_decode``), the like-for-like client;
* the source: :class:`gateway.sources.modbus.ModbusSource` with a 1 ms poll
  interval (it skips missed ticks, so it polls back to back), decoding every
  point and handing it to the validating :class:`gateway.ingest.Ingest`; its
  figure is readings accepted per second.

The ratio is the cost of planning, decoding and validation on top of the
protocol itself (target ≥ 0.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
import time

import msgspec
from pymodbus.client import AsyncModbusTcpClient

from demo.services import free_port, wait_for_port
from firmware_sim.modbus_server import RegisterMapping, RegType, SimModbusServer
from firmware_sim.sample import Sample
from gateway.config import SensorConfig
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.sources.modbus import ModbusSource
from gateway.sources.modbus_config import ModbusSourceConfig
from tecc_contract.fixedpoint import SensorRange

N_POINTS = 500
BLOCK = 125


async def _serve(port: int) -> None:
    maps = [
        RegisterMapping(sensor=f"p{i}", table="holding", address=2 * i, type=RegType.FLOAT32)
        for i in range(N_POINTS)
    ]
    server = SimModbusServer("127.0.0.1", port, maps)
    for i, m in enumerate(maps):
        server.write(Sample(sensor=m.sensor, seq=0, ts=0.0, value=20.0 + i / 100))
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def serve(port: int) -> None:
    """Child-process entry: run the simulated device until killed."""
    asyncio.run(_serve(port))


async def _bare(port: int, seconds: float, *, decode: bool = False) -> float:
    """Values/s of a bare pymodbus loop; ``decode``: also turn each register pair into a float.

    The decoding variant does the least any client must do to have values:
    one ``struct`` pack of the block and one unpack of its float32s.
    """
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)
    await client.connect()
    registers = 0
    values: list[float] = []
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            for a in range(0, 2 * N_POINTS, BLOCK - 1):
                count = min(BLOCK - 1, 2 * N_POINTS - a)
                rr = await client.read_holding_registers(a, count=count, device_id=1)
                registers += len(rr.registers)
                if decode:
                    raw = struct.pack(f">{count}H", *rr.registers)
                    values = list(struct.unpack(f">{count // 2}f", raw))
    finally:
        client.close()
    if decode and not values:
        raise RuntimeError("the decoding baseline decoded nothing")
    return registers / 2 / (time.perf_counter() - start)


async def _source(port: int, seconds: float) -> float:
    points = [
        {"sensor": f"p{i}", "kind": "holding", "address": 2 * i, "type": "float32"}
        for i in range(N_POINTS)
    ]
    cfg = msgspec.convert(
        {"host": "127.0.0.1", "port": port, "groups": [{"interval_ms": 1, "points": points}]},
        ModbusSourceConfig,
        strict=True,
    )
    ingest = Ingest(
        {
            f"p{i}": SensorConfig(id=f"p{i}", range=SensorRange(0, 100), unit="")
            for i in range(N_POINTS)
        }
    )
    source = ModbusSource(cfg, ingest, Metrics(ingest))
    task = asyncio.create_task(source.run())
    for _ in range(1500):  # until the first cycle is done: connected and warmed up
        if source.polls:
            break
        await asyncio.sleep(0.01)
    ingest.drain()
    start = time.perf_counter()
    accepted = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        await asyncio.sleep(0.05)
        accepted += len(ingest.drain())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return accepted / elapsed


def measure(seconds: float, rounds: int = 3) -> dict[str, float]:
    """Both rates and their ratio, against one device process.

    The two are measured alternately, ``rounds`` times each for
    ``seconds / rounds``, and the best round of each is kept, so that a busy
    machine biases neither side.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from bench.gateway_modbus import serve; serve({port})"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, 15)
        bares, decoded, sources = [], [], []
        for _ in range(rounds):
            bares.append(asyncio.run(_bare(port, seconds / rounds)))
            decoded.append(asyncio.run(_bare(port, seconds / rounds, decode=True)))
            sources.append(asyncio.run(_source(port, seconds / rounds)))
        bare, dec, source = max(bares), max(decoded), max(sources)
    finally:
        proc.kill()
        proc.wait(10)
    return {
        "baseline_pymodbus_values_per_s": round(bare),
        "modbus_readings_per_s": round(source),
        "modbus_ratio_vs_pymodbus": round(source / bare, 3),
        "baseline_pymodbus_decoded_values_per_s": round(dec),
        "modbus_ratio_vs_pymodbus_decode": round(source / dec, 3),
        "modbus_points": N_POINTS,
    }
