"""Publishes samples of MQTT sensors to a broker with aiomqtt.

Topics are ``<prefix>/<line>/<machine>/<sensor>``; payloads per
:mod:`firmware_sim.payloads`; QoS per sensor (0 or 1). ``json_batch`` sensors
buffer ``batch_size`` samples per publish; a garbage sample flushes the buffer
and goes out alone. A lost broker connection is not fatal: :class:`MqttLink`
counts the messages it could not send and reconnects in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os

import aiomqtt

from firmware_sim.config import MqttSettings, PayloadFormat, SensorSpec
from firmware_sim.errors import TransportError
from firmware_sim.payloads import encode, encode_batch
from firmware_sim.sample import Sample

_log = logging.getLogger(__name__)
#: Longest wait for the broker to confirm a disconnect when the simulator stops.
DISCONNECT_TIMEOUT_S = 5.0
#: Longest wait for a PUBACK before the link counts as lost (a killed broker does not
#: always reset the connection at once; waiting longer only delays noticing it).
PUBLISH_TIMEOUT_S = 3.0


async def publish_acked(
    client: aiomqtt.Client, topic: str, payload: bytes, qos: int, timeout_s: float
) -> None:
    """``client.publish`` bounded by ``timeout_s`` without losing a cancellation.

    aiomqtt bounds the wait for a PUBACK with ``asyncio.wait_for``, which on
    Python 3.11 swallows a cancellation arriving as the PUBACK completes: a
    SIGTERM then left the simulator running. ``asyncio.timeout`` does not; a
    timeout is raised as :class:`aiomqtt.MqttError`, as aiomqtt's own is.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await client.publish(topic, payload, qos=qos, timeout=math.inf)
    except TimeoutError:
        raise aiomqtt.MqttError("Operation timed out") from None


def mqtt_client(settings: MqttSettings) -> aiomqtt.Client:
    """An (unconnected) aiomqtt client for the configured broker.

    The client id is ``<client_id>-<pid>`` so two simulators on one broker do
    not take over each other's session.
    """
    return aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=f"{settings.client_id}-{os.getpid()}",
        max_inflight_messages=200,
        max_queued_outgoing_messages=0,
    )


class MqttLink:
    """An aiomqtt client that reconnects in the background after the broker goes away.

    :meth:`connect` fails fast with :class:`TransportError` when the broker is
    not there at start. Later losses do not raise: :meth:`publish` returns
    False while the link is down (the message is lost, as with a real sensor
    without a persistent session) and a background task reconnects every
    ``retry_s`` seconds.
    """

    def __init__(self, settings: MqttSettings, *, retry_s: float = 0.5) -> None:
        self.settings = settings
        self._client = mqtt_client(settings)
        self._retry_s = retry_s
        self._up = False
        self._reconnect: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def connect(self) -> None:
        """First connection; raises TransportError if the broker is unreachable."""
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(
                f"cannot connect to MQTT broker {self.settings.host}:{self.settings.port}: "
                f"{exc}; start it or pass --mqtt-host/--mqtt-port"
            ) from exc
        self._up = True

    async def publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """Publish one message; False if the link is down or broke during the call."""
        if not self._up:
            return False
        try:
            await publish_acked(self._client, topic, payload, qos, PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            self._up = False
            _log.warning(
                "MQTT link to %s:%d lost (%s); reconnecting",
                self.settings.host,
                self.settings.port,
                exc,
            )
            if self._reconnect is None or self._reconnect.done():
                self._reconnect = asyncio.create_task(self._reconnect_loop())
            return False
        return True

    async def _reconnect_loop(self) -> None:
        while not self._up:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)
            await asyncio.sleep(self._retry_s)
            try:
                await self._client.__aenter__()
            except aiomqtt.MqttError:
                continue
            self._up = True
            self.reconnects += 1
            _log.warning("MQTT link to %s:%d restored", self.settings.host, self.settings.port)

    async def close(self) -> None:
        """Stop reconnecting and disconnect."""
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._up:
            self._up = False
            # aiomqtt waits for the broker's disconnect without a timeout; bound it so a
            # stopped simulator always exits (a wedged link is simply dropped).
            try:
                async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                    await self._client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                _log.warning("MQTT disconnect did not complete (%s); dropping the link", exc)


class MqttSink:
    """Sink for MQTT sensors; counts MQTT messages ``published`` and ``lost`` (link down)."""

    def __init__(self, link: MqttLink) -> None:
        self._link = link
        self._settings = link.settings
        self._pending: dict[str, tuple[SensorSpec, list[Sample]]] = {}
        self.published = 0
        self.lost = 0

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
        topic = spec.topic(self._settings.topic_prefix)
        if await self._link.publish(topic, payload, spec.qos):
            self.published += 1
        else:
            self.lost += 1
