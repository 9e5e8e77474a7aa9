"""Load mode for benchmarks: many MQTT topics or OPC-UA nodes at a total rate.

Readings are spread round-robin over ``nodes`` sensors named
``load.m<k>.s<i>`` (MQTT topic ``<prefix>/m<k>/s<i>``, 100 sensors per
machine) and paced so that ``total_rate`` readings per second leave in total.
MQTT uses paho-mqtt's threaded network loop, because one awaited aiomqtt
publish per message tops out near 1,700 messages/s; ``batch > 1`` packs that
many readings of one topic into a ``json_batch`` array per message.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.config import (
    KIND_DEFAULTS,
    OpcuaSettings,
    SensorKind,
    SensorSpec,
    Transport,
)
from firmware_sim.errors import SimConfigError, TransportError
from firmware_sim.opcua_server import OpcuaSink, SimOpcuaServer
from firmware_sim.sample import Sample

ProgressFn = Callable[[int, float], None]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to generate: ``nodes`` sensors, ``total_rate`` readings/s for ``duration_s``."""

    nodes: int
    total_rate: float
    duration_s: float
    qos: int = 0
    batch: int = 1
    prefix: str = "site/load"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.total_rate <= 0 or self.duration_s <= 0:
            raise SimConfigError("load needs nodes >= 1, rate > 0 and duration > 0")
        if self.qos not in (0, 1) or self.batch < 1:
            raise SimConfigError("load needs qos 0 or 1 and batch >= 1")

    @property
    def total_readings(self) -> int:
        """Readings the run will send."""
        return round(self.total_rate * self.duration_s)

    def sensor(self, i: int) -> SensorSpec:
        """The generic sensor behind node ``i``."""
        d = KIND_DEFAULTS[SensorKind.GENERIC]
        return SensorSpec(
            line="load",
            machine=f"m{i // 100:03d}",
            name=f"s{i:05d}",
            kind=SensorKind.GENERIC,
            unit=d.unit,
            low=d.low,
            high=d.high,
            rate_hz=max(1e-3, min(10_000.0, self.total_rate / self.nodes)),
            transport=Transport.OPCUA,
            signal=d.signal,
        )

    def topic(self, i: int) -> str:
        """MQTT topic of node ``i``."""
        return f"{self.prefix}/m{i // 100:03d}/s{i:05d}"


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load run achieved; ``acked`` counts QoS 1 PUBACKs (or sends for QoS 0)."""

    readings: int
    messages: int
    acked: int
    seconds: float

    @property
    def rate(self) -> float:
        """Readings per second achieved."""
        return self.readings / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> str:
        """One JSON object with the counters and the achieved rate."""
        return json.dumps({**asdict(self), "rate": round(self.rate, 1)})


def _values(rng: np.random.Generator, base: np.ndarray, idx: np.ndarray) -> list[float]:
    """Noisy readings around each node's base level, one per entry of ``idx``."""
    noisy: np.ndarray = base[idx] + rng.normal(0.0, 1.0, idx.size)
    out: list[float] = np.round(noisy, 4).tolist()
    return out


def _payloads(
    spec: LoadSpec, first: int, count: int, values: list[float], wall0: float
) -> list[tuple[str, str]]:
    """(topic, JSON payload) of messages ``first .. first+count-1``; ``values`` row-major."""
    msg_rate = spec.total_rate / spec.batch
    out: list[tuple[str, str]] = []
    pos = 0
    for m in range(first, first + count):
        n = min(spec.batch, spec.total_readings - m * spec.batch)
        ts0 = wall0 + m / msg_rate
        items = [
            f'{{"value":{values[pos + k]!r},"ts":{round(ts0 + k * 1e-3, 6)!r}}}' for k in range(n)
        ]
        pos += n
        body = items[0] if spec.batch == 1 else "[" + ",".join(items) + "]"
        out.append((spec.topic(m % spec.nodes), body))
    return out


#: Messages allowed in paho's outgoing queue before the loop waits for acks.
#: paho scans its in-flight messages on every ack, so a small window (200 measured
#: best against 50 and 1,000) keeps that cheap; it also keeps the rate honest.
WINDOW = 200


class _Acks:
    """Counts on_publish callbacks from paho's network thread."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def on_publish(self, *_: object) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count >= count, timeout)


def run_mqtt_load(
    spec: LoadSpec, host: str, port: int, *, progress: ProgressFn | None = None
) -> LoadReport:
    """Publish the load to an MQTT broker (blocking) and wait until every message left.

    ``seconds`` runs until the last message was acknowledged (QoS 1) or written
    to the socket (QoS 0), so the reported rate is what the broker took.
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tecc-sim-load-{spec.seed}")
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    acks = _Acks()
    client.on_publish = acks.on_publish
    try:
        client.connect(host, port)
    except OSError as exc:
        raise TransportError(f"cannot connect to MQTT broker {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        return _publish_loop(client, spec, acks, progress)
    finally:
        client.disconnect()
        client.loop_stop()


def _publish_loop(
    client: paho.Client, spec: LoadSpec, acks: _Acks, progress: ProgressFn | None
) -> LoadReport:
    rng = np.random.default_rng(spec.seed)
    base = rng.uniform(20.0, 80.0, spec.nodes)
    total_msgs = -(-spec.total_readings // spec.batch)
    msg_rate = spec.total_rate / spec.batch
    wall0, t0 = time.time(), time.monotonic()
    sent = readings = 0
    last_report = t0
    while sent < total_msgs:
        elapsed = time.monotonic() - t0
        due = min(total_msgs, int(elapsed * msg_rate) + 1, acks.count + WINDOW) - sent
        if due <= 0:
            acks.wait_for(sent - WINDOW // 2, 0.002)
            continue
        n_readings = min(spec.total_readings, (sent + due) * spec.batch) - sent * spec.batch
        topics = (
            np.arange(sent * spec.batch, sent * spec.batch + n_readings) // spec.batch
        ) % spec.nodes
        values = _values(rng, base, topics)
        for topic, payload in _payloads(spec, sent, due, values, wall0):
            client.publish(topic, payload, qos=spec.qos)
        readings += n_readings
        sent += due
        if progress is not None and time.monotonic() - last_report >= 1.0:
            last_report = time.monotonic()
            progress(readings, last_report - t0)
    acks.wait_for(sent, 30.0)
    seconds = time.monotonic() - t0
    return LoadReport(readings=readings, messages=sent, acked=acks.count, seconds=seconds)


async def run_opcua_load(
    spec: LoadSpec, settings: OpcuaSettings, *, progress: ProgressFn | None = None
) -> LoadReport:
    """Serve ``spec.nodes`` OPC-UA variables and write them at the total rate."""
    server = SimOpcuaServer(settings, load_sensors(spec))
    await server.start()
    try:
        return await write_load(spec, server, progress=progress)
    finally:
        await server.stop()


def load_sensors(spec: LoadSpec) -> list[SensorSpec]:
    """The sensors behind the load's nodes, in node order."""
    return [spec.sensor(i) for i in range(spec.nodes)]


async def write_load(
    spec: LoadSpec, server: SimOpcuaServer, *, progress: ProgressFn | None = None
) -> LoadReport:
    """Write the load into a running server built from :func:`load_sensors`."""
    rng = np.random.default_rng(spec.seed)
    base = rng.uniform(20.0, 80.0, spec.nodes)
    sensors = load_sensors(spec)
    sink = OpcuaSink(server)
    total = spec.total_readings
    wall0, t0 = time.time(), time.monotonic()
    sent = 0
    last_report = t0
    while sent < total:
        elapsed = time.monotonic() - t0
        due = min(total, int(elapsed * spec.total_rate) + 1) - sent
        if due <= 0:
            await asyncio.sleep(0.002)
            continue
        idx = np.arange(sent, sent + due) % spec.nodes
        for k, (i, v) in enumerate(zip(idx.tolist(), _values(rng, base, idx), strict=True)):
            ts = wall0 + (sent + k) / spec.total_rate
            await sink.publish(sensors[i], Sample(sensors[i].sensor_id, sent + k, ts, v))
        sent += due
        await asyncio.sleep(0)
        if progress is not None and time.monotonic() - last_report >= 1.0:
            last_report = time.monotonic()
            progress(sent, last_report - t0)
    return LoadReport(readings=sent, messages=sent, acked=sent, seconds=time.monotonic() - t0)
