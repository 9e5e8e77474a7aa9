"""The one place the gateway uses private parts of paho-mqtt and asyncua.

Each use buys throughput that the public APIs do not offer:

* :func:`raw_topic`: the undecoded topic bytes of an MQTT message (the route
  cache is keyed by them, so a message costs no UTF-8 decode);
* :func:`queue_packet`: one buffer of many PUBACKs on paho's output queue
  (``Client.ack`` queues one packet and wakes the network thread per call);
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
from importlib import metadata
from typing import Any, Final

import paho.mqtt.client as paho
from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.subscription import Subscription
from asyncua.ua.attribute_ids import AttributeIds

#: The versions whose internals this module was checked against.
PINNED: Final = {"paho-mqtt": "2.2.0", "asyncua": "2.1.0"}

_SIGNATURES: Final = {
    (paho.Client, "_packet_queue"): ("self", "command", "packet", "mid", "qos", "info"),
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
