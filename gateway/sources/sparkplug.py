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
into ``.``). Memory is bounded: at most ``max_nodes`` nodes,
``max_devices`` devices and ``max_aliases`` aliases per node; anything
beyond is rejected and counted.

The steady state — a node repeating the same NDATA/DDATA shape — is decoded
without the protobuf library's per-metric objects: the first such message is
decoded by the library and its wire layout compiled and bound to the birth
(:mod:`gateway.sources.sparkplug_wire`, :mod:`gateway.sources.sparkplug_columns`);
the next ones of that shape come out as columns from one ``struct`` unpack.
Both paths give the same result for the same payload (tests check it on
random messages); sequence checks, rebirth requests and rejects are shared.
At most four layouts are kept per (node, device) with a birth, dropped at
its next birth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import DecodeError

from gateway.sources.sparkplug_columns import NOT_SENSORS, BoundLayout, bind, integer_reading
from gateway.sources.sparkplug_topic import (
    NAMESPACE,
    REBIRTH_METRIC,
    MessageType,
    NodeKey,
    Topic,
    parse_topic,
    rebirth_request,
)
from gateway.sources.sparkplug_wire import Varints, compile_layout
from tecc_contract.errors import RejectReason
from tecc_contract.sparkplug import Payload

__all__ = [
    "NAMESPACE",
    "REBIRTH_METRIC",
    "UNATTRIBUTED",
    "MessageType",
    "NodeKey",
    "Received",
    "SparkplugHost",
    "rebirth_request",
]

#: The sensor label under which rejects that name no sensor are counted (bounded cardinality).
UNATTRIBUTED: Final = "sparkplug"
_LAYOUTS_PER_DEVICE: Final = 4  # compiled payload layouts kept per (node, device)
_TOPICS: Final = 10_000  # parsed topics remembered (outside input: bounded, then cleared)


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
    shapes: dict[str, _Shapes] = field(default_factory=dict)  # device -> compiled layouts


@dataclass(slots=True)
class _Shapes:
    """A device's DATA payload layouts, bound to its birth, by payload size."""

    by_size: dict[int, BoundLayout] = field(default_factory=dict)
    misses: int = 0  # DATA messages decoded by the library since the last columnar one


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


def _value(m: Any, datatype: int) -> float | RejectReason:
    kind = m.WhichOneof("value")
    if m.is_null:
        return RejectReason.BAD_STATUS
    if kind is None:
        return RejectReason.MALFORMED
    if kind in ("float_value", "double_value"):
        return float(getattr(m, kind))
    if kind in ("int_value", "long_value", "boolean_value"):
        return integer_reading(kind, int(getattr(m, kind)), datatype)
    return RejectReason.NOT_NUMERIC


class SparkplugHost:
    """The host's view of every edge node it has heard from."""

    def __init__(
        self,
        *,
        sensor_template: str = "{node}.{device}.{metric}",
        max_nodes: int = 10_000,
        max_aliases: int = 100_000,
        max_devices: int = 10_000,
        rebirth_holdoff_ns: int = 5_000_000_000,
        columnar: bool = True,
    ) -> None:
        """``columnar=False``: every message through the protobuf library (the reference)."""
        self.template = sensor_template
        self._columnar = columnar
        self.max_nodes = max_nodes
        self.max_aliases = max_aliases
        self.max_devices = max_devices
        self.holdoff_ns = rebirth_holdoff_ns
        self._nodes: dict[NodeKey, _Node] = {}
        self._topics: dict[str, Topic] = {}
        self._varints = Varints()
        self.stale: set[str] = set()
        #: DATA messages decoded as columns from a compiled layout / by the protobuf library
        self.columnar = 0
        self.by_library = 0

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
        where = self._topics.get(topic)
        if where is None:
            if len(self._topics) >= _TOPICS:
                self._topics.clear()
            where = self._topics[topic] = parse_topic(topic)
        kind, key, device = where.kind, where.key, where.device
        if kind is None:
            if where.malformed:
                out.rejects.append((UNATTRIBUTED, RejectReason.MALFORMED))
            out.reason = where.reason
            return out
        data = kind is MessageType.NDATA or kind is MessageType.DDATA
        if data and self._columnar and self._columns(key, device, payload, now_ns, out):
            return out
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
                if data:
                    self.by_library += 1
                    if self._columnar:
                        self._compile(key, device, payload)
        return out

    # -- columnar DATA (gateway/sources/sparkplug_columns.py) ----------------------------

    def _columns(
        self, key: NodeKey, device: str, payload: bytes, now_ns: int, out: Received
    ) -> bool:
        """Decode a DATA message with its device's compiled layout; False if there is none."""
        node = self._nodes.get(key)
        if node is None or node.seq is None:
            return False
        shapes = node.shapes.get(device)
        bound = None if shapes is None else shapes.by_size.get(len(payload))
        got = None if bound is None else bound.decode(payload, self._varints, now_ns)
        if shapes is None or bound is None or got is None:
            return False
        shapes.misses = 0
        self.columnar += 1
        seq, out.stamps, out.values = got
        self._check_seq(node, seq, key, now_ns, out)
        out.sensors = list(bound.sensors)
        if bound.rejects:
            out.rejects.extend(bound.rejects)
        return True

    def _compile(self, key: NodeKey, device: str, payload: bytes) -> None:
        """After a DATA message the library decoded: compile and bind its layout.

        Only for a device with a birth (so the table is bounded by the births),
        and backing off exponentially (the 1st, 2nd, 4th, 8th … miss in a row)
        for a node whose payloads change shape all the time.
        """
        node = self._nodes.get(key)
        if node is None or node.seq is None or device not in node.by_name:
            return
        shapes = node.shapes.get(device)
        if shapes is None:
            shapes = node.shapes[device] = _Shapes()
        shapes.misses += 1
        if shapes.misses & (shapes.misses - 1):
            return
        layout = compile_layout(payload)
        if layout is None:
            return
        bound = bind(layout, node.by_name[device], node.by_alias.get(device, {}))
        if bound is None:
            return
        if len(shapes.by_size) >= _LAYOUTS_PER_DEVICE:
            shapes.by_size.clear()
        shapes.by_size[layout.size] = bound

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
        self._check_seq(node, seq, c.key, c.now_ns, out)
        if kind is MessageType.DBIRTH:
            if c.device not in node.devices and len(node.devices) >= self.max_devices:
                out.rejects.append((UNATTRIBUTED, RejectReason.UNKNOWN_SENSOR))
                out.reason = (
                    f"more than {self.max_devices} devices on node {c.key}: "
                    f"birth of {c.device!r} ignored"
                )
                return
            node.devices.add(c.device)
            node.shapes.pop(c.device, None)  # the birth may reassign aliases and datatypes
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
            if type(name) is not str:  # not UTF-8: the library hands over the raw bytes
                out.rejects.append((UNATTRIBUTED, RejectReason.MALFORMED))
                continue
            if not name or name.startswith(NOT_SENSORS):
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
                if type(name) is not str:  # not UTF-8 (raw bytes from the library)
                    out.rejects.append((UNATTRIBUTED, RejectReason.MALFORMED))
                    continue
                if name.startswith(NOT_SENSORS):
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

    def _check_seq(self, node: _Node, seq: int, key: NodeKey, now_ns: int, out: Received) -> None:
        """§7.1: ``seq`` must follow the node's last one (mod 256); a gap asks for a rebirth."""
        want = (-1 if node.seq is None else node.seq + 1) % 256
        if seq != want:
            self._ask_rebirth(key, now_ns, out, f"sequence gap: expected {want}, got {seq}")
        if 0 <= seq <= 255:
            node.seq = seq

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
