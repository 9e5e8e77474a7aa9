"""Sparkplug B topics (Sparkplug 3.0 §4.1) and the host's one command, the rebirth request.

:func:`parse_topic` reads ``spBv1.0/<group>/<type>/<edge node>[/<device>]``
and checks the shape against the message type (a device topic for DBIRTH,
DDATA and DDEATH only); :func:`rebirth_request` is the NCMD a host publishes
to ask a node for its births again (§6.4.8).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from tecc_contract.sparkplug import Payload, SparkplugType

NAMESPACE: Final = "spBv1.0"
REBIRTH_METRIC: Final = "Node Control/Rebirth"


class MessageType(enum.StrEnum):
    """The Sparkplug message types a host consumes."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"


_TYPES: Final = {t.value: t for t in MessageType}
_DEVICE_TYPES: Final = frozenset({MessageType.DBIRTH, MessageType.DDATA, MessageType.DDEATH})
NodeKey = tuple[str, str]  # (group id, edge node id)


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic: the message type (None: ignored or malformed), node, device."""

    kind: MessageType | None
    key: NodeKey = ("", "")
    device: str = ""
    malformed: bool = False
    reason: str = ""


def parse_topic(topic: str) -> Topic:
    """``spBv1.0/<group>/<type>/<edge node>[/<device>]`` (§4.1), checked against its type."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or not all(parts):
        return Topic(None, malformed=True, reason="not a Sparkplug B topic")
    group, mtype, edge = parts[1], parts[2], parts[3]
    device = parts[4] if len(parts) == 5 else ""
    kind = _TYPES.get(mtype)
    if kind is None:
        return Topic(None, reason=f"{mtype} ignored")
    if (kind in _DEVICE_TYPES) != bool(device):
        return Topic(
            None, malformed=True, reason="device topic shape does not match the message type"
        )
    return Topic(kind, (group, edge), device)


def rebirth_request(node: NodeKey, now_ms: int) -> tuple[str, bytes]:
    """The NCMD topic and payload asking ``node`` to publish its births again (§6.4.8)."""
    group, edge = node
    p = Payload(timestamp=now_ms)
    p.metrics.add(
        name=REBIRTH_METRIC,
        timestamp=now_ms,
        datatype=SparkplugType.BOOLEAN,
        boolean_value=True,
    )
    return f"{NAMESPACE}/{group}/NCMD/{edge}", p.SerializeToString()
