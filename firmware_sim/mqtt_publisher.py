"""Publishes samples of MQTT sensors to a broker with aiomqtt.

Topics are ``<prefix>/<line>/<machine>/<sensor>``; payloads per
:mod:`firmware_sim.payloads`; QoS per sensor (0 or 1). ``json_batch`` sensors
buffer ``batch_size`` samples per publish; a garbage sample flushes the buffer
and goes out alone. The client is passed in, so tests and the runner own its
lifetime.
"""

from __future__ import annotations

import contextlib

import aiomqtt

from firmware_sim.config import MqttSettings, PayloadFormat, SensorSpec
from firmware_sim.errors import TransportError
from firmware_sim.payloads import encode, encode_batch
from firmware_sim.sample import Sample


def mqtt_client(settings: MqttSettings, *, client_id: str | None = None) -> aiomqtt.Client:
    """An (unconnected) aiomqtt client for the configured broker."""
    return aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=client_id or settings.client_id,
        max_inflight_messages=200,
        max_queued_outgoing_messages=0,
    )


async def connect_mqtt(stack: contextlib.AsyncExitStack, settings: MqttSettings) -> aiomqtt.Client:
    """Connect a client for ``settings`` whose disconnect is tied to ``stack``."""
    try:
        return await stack.enter_async_context(mqtt_client(settings))
    except aiomqtt.MqttError as exc:
        raise TransportError(
            f"cannot connect to MQTT broker {settings.host}:{settings.port}: {exc}; "
            "start it or pass --mqtt-host/--mqtt-port"
        ) from exc


class MqttSink:
    """Sink for MQTT sensors; ``published`` counts MQTT messages sent."""

    def __init__(self, client: aiomqtt.Client, settings: MqttSettings) -> None:
        self._client = client
        self._settings = settings
        self._pending: dict[str, tuple[SensorSpec, list[Sample]]] = {}
        self.published = 0

    async def publish(self, spec: SensorSpec, sample: Sample) -> None:
        """Send (or buffer, for ``json_batch``) one sample of ``spec``."""
        if spec.payload is PayloadFormat.JSON_BATCH and not sample.garbage:
            _, buf = self._pending.setdefault(spec.sensor_id, (spec, []))
            buf.append(sample)
            if len(buf) >= self._settings.batch_size:
                await self._flush(spec.sensor_id)
            return
        if sample.garbage:
            await self._flush(spec.sensor_id)
        await self._send(spec, encode(sample, spec.payload))

    async def close(self) -> None:
        """Send every buffered batch."""
        for sensor_id in list(self._pending):
            await self._flush(sensor_id)

    async def _flush(self, sensor_id: str) -> None:
        entry = self._pending.pop(sensor_id, None)
        if entry and entry[1]:
            await self._send(entry[0], encode_batch(entry[1]))

    async def _send(self, spec: SensorSpec, payload: bytes) -> None:
        try:
            await self._client.publish(
                spec.topic(self._settings.topic_prefix), payload, qos=spec.qos
            )
        except aiomqtt.MqttError as exc:
            raise TransportError(
                f"publishing to {self._settings.host}:{self._settings.port} failed: {exc}; "
                "is the broker running?"
            ) from exc
        self.published += 1
