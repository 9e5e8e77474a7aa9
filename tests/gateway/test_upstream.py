"""The paho-mqtt / asyncua internals the gateway relies on, pinned to the locked versions."""

from __future__ import annotations

import struct
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import CallbackAPIVersion

from gateway.sources.upstream import (
    PINNED,
    BufferedSocket,
    check_upstream,
    lean_publish,
    raw_topic,
)

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


class _Chunks:
    """A non-blocking socket stand-in that returns the given chunks, then would block."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.calls = 0

    def recv(self, _n: int) -> bytes:
        self.calls += 1
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)

    def fileno(self) -> int:
        return 7


def test_buffered_socket_serves_small_reads_from_one_recv() -> None:
    """Three packets in one segment: one system call, every byte in order, pending() exact."""
    inner = _Chunks(b"abcdefgh", b"")
    sock = BufferedSocket(inner)
    assert [sock.recv(1), sock.recv(3)] == [b"a", b"bcd"]
    assert sock.pending() == 4
    assert sock.recv(10) == b"efgh"
    assert inner.calls == 1
    assert sock.pending() == 0
    assert sock.recv(1) == b""  # end of stream still reads as b""
    with pytest.raises(BlockingIOError):  # and an empty socket still would block
        sock.recv(1)
    assert sock.fileno() == 7  # everything else is the socket's


def _publish(
    topic: bytes, mid: int, payload: bytes, *, props: bytes = b"\x00", qos: int = 1
) -> bytes:
    """One MQTT 5 PUBLISH packet without its fixed header's length (paho's ``packet``)."""
    return (
        struct.pack("!H", len(topic))
        + topic
        + (struct.pack("!H", mid) if qos else b"")
        + props
        + payload
    )


def _lean_client() -> tuple[paho.Client, list[paho.MQTTMessage], list[str]]:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True
    )
    got: list[paho.MQTTMessage] = []
    slow: list[str] = []
    client.on_message = lambda _c, _u, m: slow.append(m.topic)
    lean_publish(client, got.append)
    return client, got, slow


@pytest.mark.parametrize(
    ("command", "dup", "qos", "retain"),
    [(0x32, False, 1, False), (0x3B, True, 1, True), (0x30, False, 0, False)],
)
def test_lean_publish_decodes_like_paho(command: int, dup: bool, qos: int, retain: bool) -> None:
    """Topic bytes, packet id, flags and payload equal what paho's own decoder reads."""
    client, got, slow = _lean_client()
    packet = _publish(b"plant/\xff/t", 513, b"\x00payload", qos=qos)
    client._in_packet["command"] = command
    client._in_packet["packet"] = bytearray(packet)
    client._handle_publish()
    want = decode_publish(command, packet, paho.MQTTv5)
    [msg] = got
    assert slow == []
    assert (raw_topic(msg), msg.mid, msg.dup, msg.qos, msg.retain, msg.payload) == (
        want.topic,
        want.mid,
        want.dup,
        want.qos,
        want.retain,
        want.payload,
    )


def test_lean_publish_leaves_properties_to_paho() -> None:
    """A PUBLISH with properties (here a content type) goes through paho's own handler."""
    client, got, slow = _lean_client()
    ctype = b"\x07\x03\x00\x04json"  # property length 7: content type "json"
    client._in_packet["command"] = 0x32
    client._in_packet["packet"] = bytearray(_publish(b"a/b", 1, b"1", props=ctype))
    client._handle_publish()
    assert got == []
    assert slow == ["a/b"]


def test_lean_publish_only_for_manual_ack_clients() -> None:
    """Without manual acknowledgement paho must send the PUBACK itself: handler untouched."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5)
    before = client._handle_publish
    lean_publish(client, lambda _m: None)
    assert client._handle_publish == before
