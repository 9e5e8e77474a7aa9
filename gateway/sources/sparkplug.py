"""Sans-IO Sparkplug B host logic: births, aliases, sequence numbers, rebirths, deaths.

:meth:`SparkplugHost.receive` takes one MQTT message (topic, payload bytes,
receive time) and returns what it means: readings, rejections, rebirth
requests to publish, and sensors that became stale or live. No socket, no
clock, no exception on untrusted input (Sparkplug 3.0 specification,
sections cited below).

* Topics (§4.1): ``spBv1.0/<group>/<type>/<edge node>[/<device>]``; types
  NBIRTH, NDEATH, DBIRTH, DDEATH, NDATA, DDATA (NCMD/DCMD/STATE are ignored).
* Births (§6.4.7, §7.1): an NBIRTH resets the node — ``seq`` starts at 0,
  ``bdSeq`` recorded, every metric's name, alias and datatype learnt; a DBIRTH
  adds a device's metrics. Birth metrics with values are readings too.
* Sequence numbers (§7.1): every message of a node after its NBIRTH (DBIRTH,
  NDATA, DDATA, DDEATH) carries ``seq`` = previous + 1 mod 256. A gap, an
  unknown alias, a DATA/DBIRTH before any NBIRTH, or an undecodable payload
  from a node means the host's view of the node is incomplete: it asks for a
  rebirth (NCMD ``Node Control/Rebirth`` = true, §6.4.8) — at most once per
  ``rebirth_holdoff_ns`` per node — and meanwhile decodes what it still can.
* Deaths (§7.2): NDEATH (the node's MQTT will) with the ``bdSeq`` of the
  current birth makes the node and all its devices stale; a stale death (an
  older ``bdSeq``) is ignored. DDEATH makes one device stale.
* Values (§6.4.16): Int8/16/32 arrive two's-complement in ``int_value``,
  Int64 in ``long_value``; UInt*, Float, Double, Boolean (0/1) and DateTime
  (ms) are numbers; strings, bytes, data sets and templates are not numeric
  and are rejected as such. A metric with ``is_null`` (bad quality) is a
  ``bad_status`` reject. Each reading is stamped with the metric's timestamp,
  else the payload's, else the receive time (ms → ns).

Sensor ids come from ``sensor_template`` over ``group``, ``node``, ``device``
(empty for node metrics) and ``metric`` (the metric name with ``/`` turned
into ``.``). Memory is bounded: at most ``max_nodes`` nodes and
``max_aliases`` aliases per node; anything beyond is rejected and counted.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import DecodeError

from tecc_contract.errors import RejectReason
from tecc_contract.sparkplug import Payload, SparkplugType

NAMESPACE: Final = "spBv1.0"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
#: The sensor label under which rejects that name no sensor are counted (bounded cardinality).
UNATTRIBUTED: Final = "sparkplug"
_NOT_SENSORS: Final = ("bdSeq", "Node Control/", "Properties/")
_SIGNED_BITS: Final[dict[int, int]] = {
    SparkplugType.INT8: 8,
    SparkplugType.INT16: 16,
    SparkplugType.INT32: 32,
}


class MessageType(enum.StrEnum):
    """The Sparkplug message types a host consumes."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"


_TYPES: Final = {t.value: t for t in MessageType}
NodeKey = tuple[str, str]  # (group id, edge node id)


@dataclass(slots=True)
class _Node:
    bd_seq: int | None = None
    seq: int | None = None  # last seq seen; None before the NBIRTH
    # device ("" = node) -> alias or metric name -> (sensor id, datatype), learnt at birth
    by_alias: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    by_name: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    known: int = 0  # metric names learnt, all devices (bounded by ``max_aliases``)
    devices: set[str] = field(default_factory=set)
    sensors: dict[str, set[str]] = field(default_factory=dict)  # device ("" = node) -> sensor ids
    last_rebirth_ns: int | None = None


@dataclass(slots=True)
class _Msg:
    """One message being interpreted: whose it is, its default timestamp, the result."""

    key: NodeKey
    device: str
    ts: int
    now_ns: int
    out: Received


@dataclass(slots=True)
class Received:
    """What one message meant; readings as parallel columns (no tuple per reading)."""

    sensors: list[str] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rejects: list[tuple[str, RejectReason]] = field(default_factory=list)
    rebirth: list[NodeKey] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)
    reason: str = ""  # why a rebirth was asked or the message ignored (for the log)

    @property
    def rows(self) -> list[tuple[str, int, float]]:
        """The readings as (sensor, timestamp ns, value) rows."""
        return list(zip(self.sensors, self.stamps, self.values, strict=True))


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


def _value(m: Any, datatype: int) -> float | RejectReason:
    kind = m.WhichOneof("value")
    if m.is_null:
        return RejectReason.BAD_STATUS
    if kind is None:
        return RejectReason.MALFORMED
    if kind == "int_value":
        v = int(m.int_value)
        bits = _SIGNED_BITS.get(datatype)
        if bits is not None:  # two's complement in the low ``bits`` bits
            v &= (1 << bits) - 1
            v -= (1 << bits) if v >> (bits - 1) else 0
        return float(v)
    if kind == "long_value":
        v = int(m.long_value)
        if datatype == SparkplugType.INT64:
            v = struct.unpack(">q", struct.pack(">Q", v))[0]
        return float(v)
    if kind in ("float_value", "double_value"):
        return float(getattr(m, kind))
    if kind == "boolean_value":
        return 1.0 if m.boolean_value else 0.0
    return RejectReason.NOT_NUMERIC


class SparkplugHost:
    """The host's view of every edge node it has heard from."""

    def __init__(
        self,
        *,
        sensor_template: str = "{node}.{device}.{metric}",
        max_nodes: int = 10_000,
        max_aliases: int = 100_000,
        rebirth_holdoff_ns: int = 5_000_000_000,
    ) -> None:
        self.template = sensor_template
        self.max_nodes = max_nodes
        self.max_aliases = max_aliases
        self.holdoff_ns = rebirth_holdoff_ns
        self._nodes: dict[NodeKey, _Node] = {}
        self.stale: set[str] = set()

    @property
    def node_count(self) -> int:
        """Edge nodes tracked (bounded by ``max_nodes``)."""
        return len(self._nodes)

    def sensor_id(self, group: str, node: str, device: str, metric: str) -> str:
        """The gateway sensor id of one metric (template; ``/`` in names becomes ``.``)."""
        sid = self.template.format(
            group=group, node=node, device=device, metric=metric.replace("/", ".")
        )
        return sid.replace("..", ".").strip(".")

    def receive(self, topic: str, payload: bytes, now_ns: int) -> Received:
        """Interpret one message; never raises on untrusted input."""
        out = Received()
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE or not all(parts):
            out.rejects.append((UNATTRIBUTED, RejectReason.MALFORMED))
            out.reason = "not a Sparkplug B topic"
            return out
        group, mtype, edge = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else ""
        kind = _TYPES.get(mtype)
        if kind is None:
            out.reason = f"{mtype} ignored"
            return out
        if (kind in (MessageType.DBIRTH, MessageType.DDATA, MessageType.DDEATH)) != bool(device):
            out.rejects.append((UNATTRIBUTED, RejectReason.MALFORMED))
            out.reason = "device topic shape does not match the message type"
            return out
        key = (group, edge)
        try:
            msg = Payload.FromString(payload)
        except (DecodeError, RuntimeWarning, ValueError):
            out.rejects.append((UNATTRIBUTED, RejectReason.MALFORMED))
            self._ask_rebirth(key, now_ns, out, "undecodable payload")
            return out
        ts_default = int(msg.timestamp) * 1_000_000 if msg.HasField("timestamp") else now_ns
        match kind:
            case MessageType.NBIRTH:
                self._nbirth(key, msg, ts_default, out)
            case MessageType.NDEATH:
                self._ndeath(key, msg, out)
            case _:
                self._node_message(kind, msg, _Msg(key, device, ts_default, now_ns, out))
        return out

    # -- message kinds ------------------------------------------------------------------

    def _nbirth(self, key: NodeKey, msg: Any, ts: int, out: Received) -> None:
        if key not in self._nodes and len(self._nodes) >= self.max_nodes:
            out.rejects.append((UNATTRIBUTED, RejectReason.UNKNOWN_SENSOR))
            out.reason = f"more than {self.max_nodes} edge nodes: birth of {key} ignored"
            return
        old = self._nodes.get(key)
        node = _Node(seq=int(msg.seq) if msg.HasField("seq") else 0)
        if old is not None:
            node.last_rebirth_ns = old.last_rebirth_ns
        self._nodes[key] = node
        for m in msg.metrics:
            if m.name == "bdSeq":
                node.bd_seq = int(m.long_value)
        self._learn(node, msg.metrics, _Msg(key, "", ts, ts, out))

    def _ndeath(self, key: NodeKey, msg: Any, out: Received) -> None:
        node = self._nodes.get(key)
        if node is None:
            out.reason = "death of an unknown node ignored"
            return
        bd = next((int(m.long_value) for m in msg.metrics if m.name == "bdSeq"), None)
        if bd is not None and node.bd_seq is not None and bd != node.bd_seq:
            out.reason = f"stale NDEATH (bdSeq {bd}, birth had {node.bd_seq}) ignored"
            return
        for sensors in node.sensors.values():
            out.stale |= sensors
        node.seq = None  # data before the next NBIRTH asks for a rebirth
        self.stale |= out.stale

    def _node_message(self, kind: MessageType, msg: Any, c: _Msg) -> None:
        node = self._nodes.get(c.key)
        out = c.out
        if node is None or node.seq is None:
            out.rejects.extend((UNATTRIBUTED, RejectReason.UNKNOWN_SENSOR) for _ in msg.metrics)
            self._ask_rebirth(c.key, c.now_ns, out, f"{kind} before the node's NBIRTH")
            return
        seq = int(msg.seq) if msg.HasField("seq") else -1
        want = (node.seq + 1) % 256
        if seq != want:
            self._ask_rebirth(c.key, c.now_ns, out, f"sequence gap: expected {want}, got {seq}")
        if 0 <= seq <= 255:
            node.seq = seq
        if kind is MessageType.DBIRTH:
            node.devices.add(c.device)
            self._learn(node, msg.metrics, c)
        elif kind is MessageType.DDEATH:
            out.stale |= node.sensors.get(c.device, set())
            self.stale |= out.stale
        else:
            self._data(node, msg.metrics, c)

    # -- metrics --------------------------------------------------------------------------

    def _learn(self, node: _Node, metrics: Iterable[Any], c: _Msg) -> None:
        group, edge = c.key
        out = c.out
        by_name = node.by_name.setdefault(c.device, {})
        by_alias = node.by_alias.setdefault(c.device, {})
        for m in metrics:
            name: str = m.name
            if not name or name.startswith(_NOT_SENSORS):
                continue
            if node.known >= self.max_aliases:
                out.rejects.append((UNATTRIBUTED, RejectReason.UNKNOWN_SENSOR))
                continue
            datatype = int(m.datatype)
            sensor = self.sensor_id(group, edge, c.device, name)
            if name not in by_name:
                node.known += 1
            entry = by_name[name] = (sensor, datatype)
            node.sensors.setdefault(c.device, set()).add(sensor)
            if m.HasField("alias"):
                by_alias[int(m.alias)] = entry
            out.live.add(sensor)
            if m.WhichOneof("value") is not None or m.is_null:
                self._emit(sensor, m, datatype, c.ts, out)
        self.stale -= out.live

    def _data(self, node: _Node, metrics: Iterable[Any], c: _Msg) -> None:
        """The hot path: one dict lookup per metric (ids precomputed at birth), Doubles inline."""
        out = c.out
        add_sensor, add_stamp, add_value = (
            out.sensors.append,
            out.stamps.append,
            out.values.append,
        )
        by_name = node.by_name.get(c.device, {})
        by_alias = node.by_alias.get(c.device, {})
        ts = c.ts
        for m in metrics:
            name: str = m.name
            if name:
                if name.startswith(_NOT_SENSORS):
                    continue
                entry = by_name.get(name)
            else:
                entry = by_alias.get(m.alias)
            if entry is None:
                out.rejects.append((UNATTRIBUTED, RejectReason.UNKNOWN_SENSOR))
                self._ask_rebirth(c.key, c.now_ns, out, "metric not in the birth certificate")
                continue
            if m.WhichOneof("value") == "double_value" and not m.is_null:  # a float already
                add_sensor(entry[0])
                t = m.timestamp  # 0 when absent: only then is HasField needed
                add_stamp(t * 1_000_000 if t or m.HasField("timestamp") else ts)
                add_value(m.double_value)
            else:
                self._emit(entry[0], m, entry[1], ts, out)

    @staticmethod
    def _emit(sensor: str, m: Any, datatype: int, ts: int, out: Received) -> None:
        v = _value(m, datatype)
        if isinstance(v, RejectReason):
            out.rejects.append((sensor, v))
            return
        out.sensors.append(sensor)
        out.stamps.append(int(m.timestamp) * 1_000_000 if m.HasField("timestamp") else ts)
        out.values.append(v)

    def _ask_rebirth(self, key: NodeKey, now_ns: int, out: Received, why: str) -> None:
        node = self._nodes.get(key)
        if node is None:
            if len(self._nodes) >= self.max_nodes:
                out.reason = why
                return
            node = self._nodes[key] = _Node()
        if node.last_rebirth_ns is not None and now_ns - node.last_rebirth_ns < self.holdoff_ns:
            out.reason = why
            return
        node.last_rebirth_ns = now_ns
        out.rebirth.append(key)
        out.reason = why
