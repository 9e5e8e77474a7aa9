"""The paho-mqtt / asyncua internals the gateway relies on, pinned to the locked versions."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as paho

from gateway.sources.upstream import PINNED, check_upstream, raw_topic

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"


def test_adapter_pins_the_locked_versions() -> None:
    """Bumping paho-mqtt or asyncua in the lock fails here until the adapter is re-checked."""
    locked = dict(line.split("==", 1) for line in LOCK.read_text().splitlines() if "==" in line)
    assert {name: locked[name] for name in PINNED} == PINNED


def test_every_private_name_and_signature_is_still_there() -> None:
    """Fails loudly (listing what moved) when an upstream internal changes."""
    assert check_upstream() == []


def test_raw_topic_is_the_received_bytes() -> None:
    """The route cache keys on the raw topic: a non-UTF-8 topic stays as it came."""
    assert raw_topic(paho.MQTTMessage(1, b"plant/\xff/t")) == b"plant/\xff/t"
