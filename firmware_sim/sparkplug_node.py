"""A simulated Sparkplug B edge node: births, data by alias, deaths, rebirths, sequence gaps.

:class:`EdgeNode` is pure (topics and payload bytes out, no socket): it owns
the node's ``bdSeq`` and ``seq`` counters and the alias of every metric, so
tests and the runner can drive it message by message. :class:`SparkplugLink`
puts it on a broker with aiomqtt: NDEATH registered as the MQTT will,
NBIRTH/DBIRTH on connect, NDATA/DDATA per sample, and an answer to the
host's NCMD ``Node Control/Rebirth`` (Sparkplug 3.0 §6.4.8).

Faults for tests: :meth:`EdgeNode.skip_seq` makes the next message jump its
sequence number (what a host sees when a message was lost), and
:meth:`EdgeNode.ndeath` / :meth:`SparkplugLink.die` a clean or an unclean
death.

Payloads are built with the Sparkplug B schema module the gateway uses
(:mod:`tecc_contract.sparkplug`, the standard's message layout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiomqtt

from firmware_sim.mqtt_publisher import publish_acked
from tecc_contract.sparkplug import Payload, SparkplugType

#: Longest wait for a PUBACK (aiomqtt's default client timeout).
NODE_PUBLISH_TIMEOUT_S = 10.0

NS = "spBv1.0"


@dataclass(slots=True)
class EdgeNode:
    """Sparkplug state of one edge node: devices, metric aliases, counters."""

    group: str
    node: str
    devices: dict[str, Sequence[str]] = field(default_factory=dict)  # device -> metric names
    node_metrics: Sequence[str] = ()
    bd_seq: int = 0
    seq: int = 0
    _aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    _skip: int = 0

    def __post_init__(self) -> None:
        n = 1
        for name in self.node_metrics:
            self._aliases[("", name)] = n
            n += 1
        for device, names in self.devices.items():
            for name in names:
                self._aliases[(device, name)] = n
                n += 1

    def topic(self, kind: str, device: str = "") -> str:
        """``spBv1.0/<group>/<kind>/<node>[/<device>]``."""
        return f"{NS}/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")

    def skip_seq(self, n: int = 1) -> None:
        """Make the next message's seq jump by ``n`` (a lost message as the host sees it)."""
        self._skip += n

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1 + self._skip) % 256
        self._skip = 0
        return self.seq

    def ndeath(self) -> tuple[str, bytes]:
        """The NDEATH (the MQTT will): bdSeq of the current birth, no seq."""
        p = Payload(timestamp=_ms())
        p.metrics.add(name="bdSeq", datatype=SparkplugType.INT64, long_value=self.bd_seq)
        return self.topic("NDEATH"), bytes(p.SerializeToString())

    def births(self, values: dict[tuple[str, str], float]) -> list[tuple[str, bytes]]:
        """NBIRTH then one DBIRTH per device, with current ``values`` where known."""
        out = []
        self.seq = 0
        p = Payload(timestamp=_ms(), seq=0)
        p.metrics.add(name="bdSeq", datatype=SparkplugType.INT64, long_value=self.bd_seq)
        p.metrics.add(
            name="Node Control/Rebirth", datatype=SparkplugType.BOOLEAN, boolean_value=False
        )
        self._add(p, "", self.node_metrics, values, with_names=True)
        out.append((self.topic("NBIRTH"), bytes(p.SerializeToString())))
        for device, names in self.devices.items():
            d = Payload(timestamp=_ms(), seq=self._next_seq())
            self._add(d, device, names, values, with_names=True)
            out.append((self.topic("DBIRTH", device), bytes(d.SerializeToString())))
        return out

    def data(
        self, device: str, samples: Iterable[tuple[str, float, float | None]]
    ) -> tuple[str, bytes]:
        """NDATA (device "") or DDATA of (metric, timestamp s, value) samples, by alias.

        A value of ``None`` is sent as ``is_null`` (a failed sensor, bad quality).
        """
        p = Payload(timestamp=_ms(), seq=self._next_seq())
        for name, ts, value in samples:
            m = p.metrics.add(alias=self._aliases[(device, name)], timestamp=round(ts * 1000))
            if value is None:
                m.is_null = True
            else:
                m.double_value = value
        return self.topic("DDATA" if device else "NDATA", device), bytes(p.SerializeToString())

    def ddeath(self, device: str) -> tuple[str, bytes]:
        """DDEATH of one device."""
        p = Payload(timestamp=_ms(), seq=self._next_seq())
        return self.topic("DDEATH", device), bytes(p.SerializeToString())

    def _add(
        self,
        p: Payload,
        device: str,
        names: Iterable[str],
        values: dict[tuple[str, str], float],
        *,
        with_names: bool,
    ) -> None:
        for name in names:
            m = p.metrics.add(alias=self._aliases[(device, name)], datatype=SparkplugType.DOUBLE)
            if with_names:
                m.name = name
            if (device, name) in values:
                m.double_value = values[(device, name)]
            else:
                m.is_null = True


def is_rebirth_request(payload: bytes) -> bool:
    """Whether an NCMD payload asks for a rebirth (undecodable bytes: no)."""
    try:
        p = Payload.FromString(payload)
    except Exception:  # any decode failure means: not a request we act on
        return False
    return any(m.name == "Node Control/Rebirth" and m.boolean_value for m in p.metrics)


def _ms() -> int:
    return time.time_ns() // 1_000_000


class SparkplugLink:
    """One edge node on a broker: will, births on connect, rebirth on request."""

    def __init__(self, node: EdgeNode, host: str, port: int) -> None:
        self.node = node
        self.values: dict[tuple[str, str], float] = {}
        self.rebirths = 0
        self.published = 0
        topic, payload = node.ndeath()
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=f"sparkplug-{node.group}-{node.node}",
            will=aiomqtt.Will(topic, payload, qos=1),
        )
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect, publish the births, and listen for NCMD."""
        await self._client.__aenter__()
        await self._client.subscribe(self.node.topic("NCMD"), qos=1)
        await self._publish_births()
        self._task = asyncio.create_task(self._commands())

    async def publish_data(
        self, device: str, samples: Sequence[tuple[str, float, float | None]]
    ) -> None:
        """Publish one NDATA/DDATA message of ``samples``; remember the newest values."""
        async with self._lock:
            for name, _ts, value in samples:
                if value is not None:
                    self.values[(device, name)] = value
            topic, payload = self.node.data(device, samples)
            await publish_acked(self._client, topic, payload, 1, NODE_PUBLISH_TIMEOUT_S)
            self.published += 1

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish raw bytes (a death, a malformed payload in tests)."""
        async with self._lock:
            await publish_acked(self._client, topic, payload, 1, NODE_PUBLISH_TIMEOUT_S)

    async def stop(self) -> None:
        """Publish NDEATH cleanly and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        topic, payload = self.node.ndeath()
        with contextlib.suppress(aiomqtt.MqttError):
            await publish_acked(self._client, topic, payload, 1, NODE_PUBLISH_TIMEOUT_S)
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _publish_births(self) -> None:
        async with self._lock:
            for topic, payload in self.node.births(self.values):
                await publish_acked(self._client, topic, payload, 1, NODE_PUBLISH_TIMEOUT_S)

    async def _commands(self) -> None:
        async for message in self._client.messages:
            raw = message.payload
            if isinstance(raw, bytes | bytearray) and is_rebirth_request(bytes(raw)):
                self.rebirths += 1
                await self._publish_births()
