"""Runs the line in real (or accelerated) time and hands samples to transports.

One asyncio task per sensor sleeps until its next slot is due on the
:class:`~firmware_sim.clock.SimClock`, asks the pure
:class:`~firmware_sim.line.LineSimulator` for the sample, writes any ended
anomaly to the ground truth and passes the sample to the sink of the sensor's
transport. :func:`run_simulation` also starts and stops the OPC-UA server, the
MQTT client, the Modbus TCP device and the Sparkplug B edge nodes the
configuration needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import aiomqtt

from firmware_sim.clock import SimClock
from firmware_sim.config import SensorSpec, SimConfig, Transport
from firmware_sim.errors import TransportError
from firmware_sim.groundtruth import GroundTruthWriter
from firmware_sim.line import LineSimulator
from firmware_sim.modbus_server import ModbusSink, SimModbusServer
from firmware_sim.mqtt_publisher import MqttLink, MqttSink
from firmware_sim.opcua_server import OpcuaSink, SimOpcuaServer
from firmware_sim.plant import SparkplugSink, modbus_mappings
from firmware_sim.sample import Sample


class Sink(Protocol):
    """Where samples of one transport go; ``lost`` counts messages that could not be sent."""

    @property
    def lost(self) -> int:
        """Messages dropped because the transport was down."""

    async def publish(self, spec: SensorSpec, sample: Sample) -> None:
        """Deliver one sample (may buffer)."""

    async def close(self) -> None:
        """Deliver anything buffered."""


@dataclass(slots=True)
class RunStats:
    """Counters of a run, read by the progress line."""

    samples: int = 0
    dropped: int = 0
    lost: int = 0
    anomalies: int = 0
    started: float = field(default_factory=time.monotonic)
    sim_time: float = 0.0

    def rate(self) -> float:
        """Samples handed to sinks per wall-clock second since the run started."""
        elapsed = time.monotonic() - self.started
        return self.samples / elapsed if elapsed > 0 else 0.0


class Progress:
    """Prints a progress line to ``out`` periodically.

    Example: ``t=+12.0s samples=1800 rate=150.0 msg/s dropped=3 lost=0 anomalies=2``.
    """

    def __init__(self, stats: RunStats, start: float, out: TextIO = sys.stderr) -> None:
        self._stats = stats
        self._start = start
        self._out = out
        self._mark = (time.monotonic(), stats.samples)

    def line(self) -> str:
        """The current progress line; ``rate`` is over the time since the previous line."""
        s = self._stats
        now = time.monotonic()
        then, count = self._mark
        rate = (s.samples - count) / (now - then) if now > then else 0.0
        self._mark = (now, s.samples)
        return (
            f"t=+{s.sim_time - self._start:.1f}s samples={s.samples} rate={rate:.1f} msg/s "
            f"dropped={s.dropped} lost={s.lost} anomalies={s.anomalies}"
        )

    async def run(self, interval: float = 1.0) -> None:
        """Print the line every ``interval`` wall seconds until cancelled."""
        end = "\r" if self._out.isatty() else "\n"
        try:
            while True:
                await asyncio.sleep(interval)
                self._out.write(self.line() + end)
                self._out.flush()
        finally:
            s = self._stats
            self._out.write(
                f"t=+{s.sim_time - self._start:.1f}s samples={s.samples} "
                f"rate={s.rate():.1f} msg/s (average) dropped={s.dropped} lost={s.lost} "
                f"anomalies={s.anomalies}\n"
            )
            self._out.flush()


async def run_line(
    config: SimConfig,
    *,
    sinks: Mapping[Transport, Sink],
    groundtruth: GroundTruthWriter,
    clock: SimClock,
    duration_s: float | None,
    stats: RunStats | None = None,
) -> RunStats:
    """Publish every sensor's slots with ``ts < start + duration_s`` (forever if None)."""
    stats = stats or RunStats()
    sim = LineSimulator(config, start=clock.start)
    end = None if duration_s is None else clock.start + duration_s
    clock.begin()

    async def sensor_task(spec: SensorSpec) -> None:
        sid = spec.sensor_id
        sink = sinks[spec.transport]
        try:
            while end is None or sim.next_ts(sid) < end:
                await clock.sleep_until(sim.next_ts(sid))
                step = sim.step(sid)
                stats.sim_time = max(stats.sim_time, step.ts)
                for record in step.records:
                    groundtruth.write(record)
                    stats.anomalies += 1
                if step.sample is None:
                    stats.dropped += 1
                    continue
                await sink.publish(spec, step.sample)
                stats.samples += 1
                stats.lost = sum(s.lost for s in sinks.values())
        finally:
            for record in sim.finish(sid):
                groundtruth.write(record)
                stats.anomalies += 1

    try:
        async with asyncio.TaskGroup() as group:
            for spec in config.sensors():
                group.create_task(sensor_task(spec))
    finally:
        for sink in sinks.values():
            await sink.close()
    return stats


async def run_simulation(
    config: SimConfig,
    *,
    start: float | None = None,
    progress: TextIO | None = None,
    stats: RunStats | None = None,
) -> RunStats:
    """Start the transports ``config`` needs, run the line, then shut them down.

    Cancelling the task stops the run cleanly: anomalies still running are
    written to the ground truth, buffered batches are sent, servers stop.
    """
    start = start if start is not None else config.start_time
    start = round(time.time(), 3) if start is None else start
    clock = SimClock(start, speed=config.speed)
    stats = stats or RunStats()
    stats.sim_time = start
    sinks: dict[Transport, Sink] = {}
    async with contextlib.AsyncExitStack() as stack:
        if config.sensors(Transport.OPCUA):
            server = SimOpcuaServer(config.opcua, config.sensors(Transport.OPCUA))
            await server.start()
            stack.push_async_callback(server.stop)
            sinks[Transport.OPCUA] = OpcuaSink(server)
        if config.sensors(Transport.MQTT):
            link = MqttLink(config.mqtt)
            await link.connect()
            stack.push_async_callback(link.close)
            sinks[Transport.MQTT] = MqttSink(link)
        if config.sensors(Transport.MODBUS):
            device = SimModbusServer(
                config.modbus.host, config.modbus.port, modbus_mappings(config)
            )
            try:
                await device.start()
            except OSError as exc:
                raise TransportError(
                    f"cannot listen for Modbus TCP on {config.modbus.host}:{config.modbus.port} "
                    f"({exc}); free the port or pass --modbus-port"
                ) from exc
            stack.push_async_callback(device.stop)
            sinks[Transport.MODBUS] = ModbusSink(device)
        if config.sensors(Transport.SPARKPLUG):
            nodes = SparkplugSink(config)
            try:
                await nodes.start()
            except aiomqtt.MqttError as exc:
                raise TransportError(
                    f"cannot connect the Sparkplug edge nodes to MQTT broker {config.mqtt.host}:"
                    f"{config.mqtt.port}: {exc}; start it or pass --mqtt-host/--mqtt-port"
                ) from exc
            stack.push_async_callback(nodes.close)
            sinks[Transport.SPARKPLUG] = nodes
        writer = stack.enter_context(GroundTruthWriter(config.groundtruth))
        reporter = None
        if progress is not None:
            reporter = asyncio.create_task(Progress(stats, start, progress).run())
        try:
            await run_line(
                config,
                sinks=sinks,
                groundtruth=writer,
                clock=clock,
                duration_s=config.duration_s,
                stats=stats,
            )
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
    return stats
