"""A QoS 1 MQTT publisher for tests (paho, threaded, waits for every PUBACK)."""

from __future__ import annotations

from collections.abc import Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def publish(port: int, messages: Iterable[tuple[str, bytes]], *, qos: int = 1) -> int:
    """Publish all ``messages`` and wait until the broker acknowledged each; return count."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            if not info.is_published():
                raise TimeoutError("broker did not acknowledge a publish")
        return len(infos)
    finally:
        client.disconnect()
        client.loop_stop()
