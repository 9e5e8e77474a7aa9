"""Sample MQTT topics and infer their payload mappings (``tecc-gateway init --mqtt``).

paho's threaded client, as the gateway's source uses, with a throwaway client
id and a clean session (the gateway's own persistent session is untouched),
subscribes to the filters for ``sample_s`` seconds. Per topic it keeps, with
bounded memory (at most :data:`MAX_TOPICS` topics, numeric paths per topic
capped), what the payloads looked like:

* ``spBv1.0/...`` topics are Sparkplug B and decoded by the gateway's own host
  logic (:class:`~gateway.sources.sparkplug.SparkplugHost`, which also asks a
  node whose births were missed for a rebirth, as the gateway does); each
  numeric metric becomes a sensor named by the rule's template;
* a payload that is the text of one number: ``number``;
* a JSON object: ``json`` with the numeric field path (``value`` if present,
  else the first numeric leaf) and a timestamp path (``ts``, ``timestamp``,
  ``time``) when one parses;
* a JSON array: ``json_batch`` likewise over its items;
* a topic whose payloads mix these: ``auto``.

Each proposed sensor's range is the observed [min, max] widened by a margin
(a quarter of the span, a tenth of the magnitude, at least 1), marked as
observed in the file: to be reviewed against the sensor's data sheet.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import PayloadFormat
from gateway.errors import GatewayError
from gateway.init.opcua import SensorIds, sanitize
from gateway.sources.payload import MAX_PAYLOAD_BYTES, PayloadSpec, parse_payload
from gateway.sources.sparkplug import SparkplugHost, rebirth_request

MAX_TOPICS = 10_000
MAX_PATHS = 64
SPARKPLUG_TEMPLATE = "{node}.{device}.{metric}"
_TS_KEYS = ("ts", "timestamp", "time", "t")


@dataclass(slots=True)
class Span:
    """Observed minimum, maximum and count of one value stream."""

    low: float = math.inf
    high: float = -math.inf
    count: int = 0

    def add(self, v: float) -> None:
        """Record one finite value."""
        if math.isfinite(v):
            self.low, self.high = min(self.low, v), max(self.high, v)
            self.count += 1


@dataclass(slots=True)
class TopicStats:
    """What the payloads of one topic looked like."""

    formats: Counter[str] = field(default_factory=Counter)
    paths: dict[str, Span] = field(default_factory=dict)  # JSON numeric leaf -> values
    ts_paths: Counter[str] = field(default_factory=Counter)
    messages: int = 0


@dataclass(frozen=True, slots=True)
class TopicProposal:
    """One topic rule and the sensor it feeds."""

    filter: str
    sensor_template: str
    format: PayloadFormat
    value_path: str
    timestamp_path: str | None
    sensors: dict[str, Span]  # sensor id -> observed values
    note: str


@dataclass(slots=True)
class Sample:
    """Everything seen during one sampling run."""

    topics: dict[str, TopicStats] = field(default_factory=dict)
    sparkplug: dict[str, Span] = field(default_factory=dict)  # sensor id -> values
    sparkplug_groups: set[str] = field(default_factory=set)
    dropped_topics: int = 0
    messages: int = 0


def _leaves(obj: object, prefix: str, out: dict[str, float], depth: int = 0) -> None:
    if depth > 8 or len(out) >= MAX_PATHS:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _leaves(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and prefix:
        out[prefix] = float(obj)


_TS_SPEC = PayloadSpec(PayloadFormat.JSON, ("v",), ("t",))


def _is_timestamp(raw: object) -> bool:
    """True if the gateway's payload parser accepts ``raw`` as a timestamp."""
    probe = json.dumps({"v": 0, "t": raw}).encode()
    return not parse_payload(probe, _TS_SPEC, 0).rejects


class Sampler:
    """The paho callbacks' side: classify payloads into a :class:`Sample` (thread-safe)."""

    def __init__(self) -> None:
        self.sample = Sample()
        self._lock = threading.Lock()
        self._host = SparkplugHost(sensor_template=SPARKPLUG_TEMPLATE)
        self.rebirths: list[tuple[str, bytes]] = []

    def observe(self, topic: str, payload: bytes) -> None:
        """Classify one message."""
        with self._lock:
            self.sample.messages += 1
            if topic.startswith("spBv1.0/"):
                self._sparkplug(topic, payload)
                return
            stats = self.sample.topics.get(topic)
            if stats is None:
                if len(self.sample.topics) >= MAX_TOPICS:
                    self.sample.dropped_topics += 1
                    return
                stats = self.sample.topics[topic] = TopicStats()
            stats.messages += 1
            self._classify(stats, payload)

    def _sparkplug(self, topic: str, payload: bytes) -> None:
        now = time.time_ns()
        got = self._host.receive(topic, payload, now)
        self.sample.sparkplug_groups.add(topic.split("/")[1] if "/" in topic else "")
        for sensor, _, value in got.rows:
            if sensor in self.sample.sparkplug or len(self.sample.sparkplug) < MAX_TOPICS:
                self.sample.sparkplug.setdefault(sensor, Span()).add(value)
        for node in got.rebirth:
            self.rebirths.append(rebirth_request(node, now // 1_000_000))

    def _classify(self, stats: TopicStats, payload: bytes) -> None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            stats.formats["too_large"] += 1
            return
        try:
            value = float(payload)
        except ValueError:
            pass
        else:
            stats.formats[PayloadFormat.NUMBER.value] += 1
            stats.paths.setdefault("", Span()).add(value)
            return
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            stats.formats["unparsable"] += 1
            return
        if isinstance(doc, list):
            stats.formats[PayloadFormat.JSON_BATCH.value] += 1
            items: list[Any] = doc[:1000]
        elif isinstance(doc, dict):
            stats.formats[PayloadFormat.JSON.value] += 1
            items = [doc]
        else:
            stats.formats["unparsable"] += 1
            return
        for item in items:
            _item(stats, item)

    def take_rebirths(self) -> list[tuple[str, bytes]]:
        """The rebirth requests (NCMD topic, payload) asked since the last call."""
        with self._lock:
            asks, self.rebirths = self.rebirths, []
        return asks


def _item(stats: TopicStats, item: object) -> None:
    """Record the numeric leaves and timestamp fields of one JSON item."""
    leaves: dict[str, float] = {}
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        leaves[""] = float(item)
    else:
        _leaves(item, "", leaves)
    for path, v in leaves.items():
        if path in stats.paths or len(stats.paths) < MAX_PATHS:
            stats.paths.setdefault(path, Span()).add(v)
    if isinstance(item, dict):
        for key in _TS_KEYS:
            if key in item and _is_timestamp(item[key]):
                stats.ts_paths[key] += 1


def sample(host: str, port: int, filters: list[str], sample_s: float) -> tuple[Sample, str]:
    """Subscribe to ``filters`` on ``host:port`` for ``sample_s`` seconds; (sample, log)."""
    sampler = Sampler()
    connected = threading.Event()
    refused: list[str] = []
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"tecc-init-{uuid.uuid4().hex[:12]}",
        protocol=paho.MQTTv5,
    )

    def on_connect(c: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            refused.append(str(rc))
            connected.set()
            return
        c.subscribe([(f, 1) for f in filters])
        connected.set()

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        sampler.observe(msg.topic, bytes(msg.payload))

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30, clean_start=True)
    except OSError as exc:
        raise GatewayError(
            f"cannot reach the MQTT broker at {host}:{port} ({exc}); check --mqtt HOST[:PORT]"
        ) from exc
    client.loop_start()
    try:
        if not connected.wait(10):
            raise GatewayError(f"the MQTT broker at {host}:{port} did not answer within 10 s")
        if refused:
            raise GatewayError(f"the MQTT broker at {host}:{port} refused: {refused[0]}")
        deadline = time.monotonic() + sample_s
        while time.monotonic() < deadline:
            time.sleep(0.1)
            for topic, body in sampler.take_rebirths():
                client.publish(topic, body, qos=0)
    finally:
        client.disconnect()
        client.loop_stop()
    return (
        sampler.sample,
        f"{sampler.sample.messages} messages on {len(sampler.sample.topics)} topics",
    )


def widen(span: Span) -> tuple[float, float]:
    """The observed range widened by the margin of the module docstring."""
    margin = max(0.25 * (span.high - span.low), 0.1 * max(abs(span.low), abs(span.high)), 1.0)
    return span.low - margin, span.high + margin


def _choose_path(stats: TopicStats) -> str | None:
    numeric = [p for p, s in stats.paths.items() if s.count and p not in _TS_KEYS]
    if "" in numeric:
        return ""
    if "value" in numeric:
        return "value"
    return numeric[0] if numeric else None


def propose(s: Sample, ids: SensorIds) -> tuple[list[TopicProposal], list[tuple[str, str]]]:
    """Topic rules with their sensors, and (topic, reason) for topics that yield none."""
    rules: list[TopicProposal] = []
    skipped: list[tuple[str, str]] = []
    for topic in sorted(s.topics):
        stats = s.topics[topic]
        kinds = [
            k
            for k in stats.formats
            if k
            in {
                f.value
                for f in (PayloadFormat.NUMBER, PayloadFormat.JSON, PayloadFormat.JSON_BATCH)
            }
        ]
        path = _choose_path(stats)
        if not kinds or path is None:
            skipped.append((topic, f"no numeric payload ({dict(stats.formats)})"))
            continue
        fmt = PayloadFormat(kinds[0]) if len(kinds) == 1 else PayloadFormat.AUTO
        ts = next((k for k in _TS_KEYS if stats.ts_paths[k]), None)
        value_path = path or "value"
        sid = ids.take([sanitize(level) for level in topic.split("/")])
        others = sorted(p for p in stats.paths if p and p != path)
        note = f"{fmt.value}" + (
            f", value at {value_path}" if fmt is not PayloadFormat.NUMBER else ""
        )
        if others:
            note += f" (other numeric fields: {', '.join(others[:5])})"
        rules.append(TopicProposal(topic, sid, fmt, value_path, ts, {sid: stats.paths[path]}, note))
    if s.sparkplug:
        for group in sorted(s.sparkplug_groups):
            members = {k: v for k, v in s.sparkplug.items() if v.count}
            rules.append(
                TopicProposal(
                    f"spBv1.0/{group}/#",
                    SPARKPLUG_TEMPLATE,
                    PayloadFormat.SPARKPLUG_B,
                    "value",
                    None,
                    members if group == sorted(s.sparkplug_groups)[0] else {},
                    "sparkplug_b",
                )
            )
    return rules, skipped
