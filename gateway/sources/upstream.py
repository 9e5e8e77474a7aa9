"""The one place the gateway uses private parts of paho-mqtt and asyncua.

Each use buys throughput that the public APIs do not offer:

* :func:`raw_topic`: the undecoded topic bytes of an MQTT message (the route
  cache is keyed by them, so a message costs no UTF-8 decode);
* :func:`queue_packet`: one buffer of many PUBACKs on paho's output queue
  (``Client.ack`` queues one packet and wakes the network thread per call);
* :func:`buffer_reads`: a read buffer in front of paho's socket. paho reads a
  packet with three or more ``recv`` calls (command byte, each length byte,
  the rest), each a system call that releases and retakes the GIL; behind
  the buffer one ``recv`` of up to 256 KiB serves many packets. paho's loop
  asks a socket for ``pending()`` bytes before it waits in ``select`` (it
  does so for TLS sockets), so buffered packets are never left waiting;
* :func:`lean_publish`: a PUBLISH handler for the common case (MQTT 5, QoS
  0/1 with manual acknowledgement, no properties) that builds the message and
  calls one callback. paho's own handler builds and parses a ``Properties``
  object, decodes the topic twice (for a debug log line and for the
  per-topic callbacks) and takes two locks per message: about half of its
  cost per message. Every other PUBLISH goes to paho's handler unchanged;
* :func:`monitored_item_request`: asyncua's builder of a MonitoredItemCreateRequest,
  so a subscription can create its items in batches with one filter each.

They are checked against the versions pinned in ``requirements.lock``
(:data:`PINNED`); :func:`check_upstream` lists every private name and
signature relied on, and ``tests/gateway/test_upstream.py`` fails loudly when
a locked version changes or one of them moves. Ruff's private-access rule
(SLF001) is off for this module only.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, Final

import paho.mqtt.client as paho
from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.subscription import Subscription
from asyncua.ua.attribute_ids import AttributeIds
from paho.mqtt.enums import MQTTErrorCode

#: The versions whose internals this module was checked against.
PINNED: Final = {"paho-mqtt": "2.2.0", "asyncua": "2.1.0"}

_SIGNATURES: Final = {
    (paho.Client, "_packet_queue"): ("self", "command", "packet", "mid", "qos", "info"),
    (paho.Client, "_handle_publish"): ("self",),
    (paho.MQTTMessage, "__init__"): ("self", "mid", "topic"),
    (Subscription, "_make_monitored_item_request"): (
        "self",
        "node",
        "attr",
        "mfilter",
        "queuesize",
        "monitoring",
        "sampling_interval",
    ),
    (Subscription, "publish_callback"): ("self", "publish_result"),
}


def raw_topic(msg: paho.MQTTMessage) -> bytes:
    """The topic of ``msg`` as received (bytes, not decoded)."""
    topic: bytes = msg._topic
    return topic


def queue_packet(client: paho.Client, command: int, packet: bytes) -> None:
    """Put pre-encoded ``packet`` bytes (of MQTT ``command``) on paho's output queue."""
    client._packet_queue(command, packet, 0, 0)


_READ_CHUNK: Final = 256 * 1024


class BufferedSocket:
    """A socket whose reads go through a buffer; everything else is the socket's.

    ``recv(n)`` returns buffered bytes first and refills the buffer with one
    ``recv`` of :data:`_READ_CHUNK` bytes of the underlying socket when it is
    empty, so an empty non-blocking socket still raises ``BlockingIOError``
    (or TLS's want-read) and end of stream is still ``b""``. ``pending()`` is
    the buffered byte count plus the TLS layer's own.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes, from the buffer if it holds any."""
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(max(bufsize, _READ_CHUNK))
            if len(data) <= bufsize:
                self._buf, self._pos = b"", 0
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = end = min(start + bufsize, len(self._buf))
        return self._buf[start:end]

    def pending(self) -> int:
        """Bytes readable without waiting: buffered here, or inside the TLS layer."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def buffer_reads(client: paho.Client) -> None:
    """Put a :class:`BufferedSocket` in front of ``client``'s current socket (idempotent).

    Call it from ``on_connect`` (paho's network thread, after the CONNACK was
    read): each reconnect opens a new socket, which gets its own buffer.
    """
    sock = client._sock
    if sock is not None and not isinstance(sock, BufferedSocket):
        client._sock = BufferedSocket(sock)


def lean_publish(client: paho.Client, deliver: Callable[[paho.MQTTMessage], None]) -> None:
    """Handle ``client``'s PUBLISH packets without properties by calling ``deliver``.

    Only for a client with ``manual_ack`` (the PUBACK is the caller's) and
    MQTT 5. The packet layout (MQTT 5 §3.3): topic length and topic, the
    packet id for QoS > 0, the property length (one byte 0 = none), the
    payload. A packet with properties, QoS 2, or one too short to hold that
    layout goes to paho's own handler, which also reports malformed packets.
    """
    if not client._manual_ack or client._protocol != paho.MQTTv5:
        return
    original = client._handle_publish

    def handle() -> Any:
        header: int = client._in_packet["command"]
        packet = client._in_packet["packet"]
        qos = (header & 0x06) >> 1
        end = 2 + ((packet[0] << 8) | packet[1]) if len(packet) >= 2 else len(packet) + 1
        pos = end + 2 if qos else end
        if qos == 2 or pos >= len(packet) or packet[pos] != 0:
            return original()
        msg = paho.MQTTMessage(
            (packet[end] << 8) | packet[end + 1] if qos else 0, bytes(packet[2:end])
        )
        msg.dup = bool(header & 0x08)
        msg.qos = qos
        msg.retain = bool(header & 0x01)
        msg.payload = bytes(packet[pos + 1 :])
        msg.timestamp = time.monotonic()
        deliver(msg)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    setattr(client, "_handle_publish", handle)  # noqa: B010 (an instance attribute, on purpose)


def monitored_item_request(
    sub: Subscription,
    node: Node,
    *,
    attr: AttributeIds,
    mfilter: ua.MonitoringFilter | None,
    queue_size: int,
    mode: ua.MonitoringMode,
    sampling_ms: float,
) -> ua.MonitoredItemCreateRequest:
    """asyncua's request for one monitored item of ``sub`` (client handle assigned)."""
    req: ua.MonitoredItemCreateRequest = sub._make_monitored_item_request(
        node, attr, mfilter, queue_size, mode, ua.Double(sampling_ms)
    )
    return req


def check_upstream() -> list[str]:
    """What no longer matches the internals this module relies on ([] if all match)."""
    problems = []
    for dist, want in PINNED.items():
        have = metadata.version(dist)
        if have != want:
            problems.append(f"{dist} is {have}, this adapter was checked against {want}")
    for (owner, name), params in _SIGNATURES.items():
        fn: Any = getattr(owner, name, None)
        if fn is None:
            problems.append(f"{owner.__module__}.{owner.__name__}.{name} is gone")
            continue
        got = tuple(inspect.signature(fn).parameters)
        if got != params:
            problems.append(f"{owner.__name__}.{name}{got} != expected {params}")
    if not isinstance(getattr(paho.MQTTMessage(1, b"t"), "_topic", None), bytes):
        problems.append("paho.mqtt.client.MQTTMessage._topic no longer holds the raw bytes")
    return problems
