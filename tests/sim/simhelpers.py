"""Shared helpers of the simulator tests (imported, unlike conftest fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt

from firmware_sim.config import PayloadFormat, SimConfig, Transport
from firmware_sim.sample import Sample

#: A fixed simulated start (2025-11-27 08:00:00 UTC) so streams are comparable.
START = 1764230400.0

ConfigFactory = Callable[[str], SimConfig]


def expected_messages(
    config: SimConfig, samples: dict[str, list[Sample]], *, min_qos: int = 0
) -> int:
    """How many MQTT messages a run publishes (batches count once), at QoS >= ``min_qos``."""
    total = 0
    for spec in config.sensors(Transport.MQTT):
        if spec.qos < min_qos:
            continue
        n = len(samples[spec.sensor_id])
        batch = config.mqtt.batch_size if spec.payload is PayloadFormat.JSON_BATCH else 1
        total += -(-n // batch)
    return total


@dataclass
class Received:
    """Messages collected by :class:`Collector`, per topic, in arrival order."""

    payloads: dict[str, list[bytes]] = field(default_factory=dict)

    def count(self) -> int:
        """Total messages received."""
        return sum(len(v) for v in self.payloads.values())

    def json_readings(self, topic: str) -> list[dict[str, object]]:
        """Well-formed JSON readings of ``topic`` (batches flattened, garbage skipped)."""
        out: list[dict[str, object]] = []
        for raw in self.payloads.get(topic, []):
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            items = obj if isinstance(obj, list) else [obj]
            out.extend(i for i in items if isinstance(i, dict))
        return out


class Collector:
    """Subscribes to a topic filter with a real aiomqtt client and records payloads."""

    def __init__(self, host: str, port: int, topic: str = "#", qos: int = 1) -> None:
        self.received = Received()
        self._client = aiomqtt.Client(host, port, identifier=f"collector-{id(self)}")
        self._topic = topic
        self._qos = qos
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Collector:
        await self._client.__aenter__()
        await self._client.subscribe(self._topic, qos=self._qos)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for message in self._client.messages:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            self.received.payloads.setdefault(message.topic.value, []).append(bytes(payload))
            self._arrived.set()

    async def wait_for(self, count: int, *, within: float = 10.0) -> None:
        """Wait until ``count`` messages arrived (TimeoutError after ``within`` seconds)."""
        async with asyncio.timeout(within):
            while self.received.count() < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.__aexit__(None, None, None)
