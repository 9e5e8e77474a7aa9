"""MQTT source: paho-mqtt's threaded client feeding the ingest hand-off.

Why paho and not an ``async for`` loop: paho's network thread parses packets
and calls :meth:`MqttSource._on_message` without any await, and the callback
only parses the payload and appends to the :class:`~gateway.ingest.Ingest`
buffer, which the event loop drains in bulk. That keeps the agent close to
the raw client's receive rate.

Delivery guarantees (QoS 1, MQTT 5):

* fixed client id, ``clean_start=False`` and a session expiry, so messages
  published while the agent is down wait in the broker;
* ``manual_ack``: a PUBACK is sent only after the message's readings are
  durably in the spool (or it was rejected), so a crash before that makes the
  broker redeliver;
* Receive Maximum 65535, so the broker keeps that many unacknowledged
  messages in flight instead of its default 20;
* which packet ids a redelivery may repeat is kept by one sans-IO state machine,
  :class:`~gateway.sources.ledger.DeliveryLedger`, fed from paho's callbacks;
* the packet ids (and a content digest) of spooled-but-not-yet-acknowledged
  messages are stored in the spool in the same transaction as the batch. After
  a crash in that window the broker redelivers them with DUP set; those that
  match are acknowledged without being ingested again, so a reading is spooled
  exactly once;
* the same holds across a reconnect without a crash (broker restart, network
  loss): messages still in the pipeline and those acknowledged just before the
  drop are recognised when the broker resends them.

Malformed payloads are counted by (sensor, reason) and logged at most once per
minute per topic; nothing a publisher sends can stop the source.

Two paho internals are used, both through :mod:`gateway.sources.upstream`
(checked against the pinned paho-mqtt): the raw topic bytes of a message (no
decode per message) and the output queue (one buffer for a batch of PUBACKs,
see :meth:`MqttSource.ack`).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import MqttSourceConfig, PayloadFormat, TopicRule
from gateway.ingest import UNMATCHED, AckToken, Ingest
from gateway.metrics import Metrics
from gateway.sources.ledger import Delivery, DeliveryLedger, Link
from gateway.sources.payload import ItemReject, PayloadReject, PayloadSpec, parse_payload
from gateway.sources.sparkplug import SparkplugHost, rebirth_request
from gateway.sources.upstream import buffer_reads, lean_publish, queue_packet, raw_topic

log = logging.getLogger(__name__)
_LOG_EVERY_S = 60.0
_NUMERIC_FIRST = frozenset({PayloadFormat.NUMBER, PayloadFormat.AUTO})
_ACK_LOSS_WINDOW_S = 5.0  # PUBACKs this recent may die with a dropped connection
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id (MQTT 5 §3.4)
_PUBACK_HEADER = 0x40
_ROUTE_CACHE = 100_000
_LOG_TOPICS = 1000  # topics remembered for log rate limiting (bounded: topics are outside input)


def digest(topic: bytes, payload: bytes) -> int:
    """A CRC-32 of topic and payload: tells a redelivery from a reused packet id."""
    return zlib.crc32(payload, zlib.crc32(topic))


def captures(filter_: str, topic: str) -> list[str] | None:
    """Wildcard captures of ``topic`` under ``filter_``, or None if it does not match."""
    f_levels, t_levels = filter_.split("/"), topic.split("/")
    out: list[str] = []
    for i, lv in enumerate(f_levels):
        if lv == "#":
            out.append("/".join(t_levels[i:]))
            return out
        if i >= len(t_levels):
            return None
        if lv == "+":
            out.append(t_levels[i])
        elif lv != t_levels[i]:
            return None
    return out if len(t_levels) == len(f_levels) else None


def route(rules: tuple[TopicRule, ...], topic: str) -> tuple[str, PayloadSpec] | None:
    """The sensor id and payload spec for ``topic`` (first matching rule), or None."""
    for rule in rules:
        caps = captures(rule.filter, topic)
        if caps is not None:
            spec = PayloadSpec(rule.format, rule.value_path, rule.timestamp_path)
            if rule.format is PayloadFormat.SPARKPLUG_B:  # ids come from the metrics
                return rule.sensor_template, spec
            return rule.sensor_template.format(*caps), spec
    return None


class MqttSource:
    """One broker connection; thread-safe towards :class:`Ingest` and the agent."""

    def __init__(
        self,
        cfg: MqttSourceConfig,
        ingest: Ingest,
        metrics: Metrics,
        *,
        redelivery: Mapping[int, int] | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._ingest = ingest
        self._metrics = metrics
        self._routes: dict[bytes, tuple[str, PayloadSpec] | None] = {}
        # Redelivery matching, see the module docstring; the lock guards the ledger and
        # the progress hold (paho's network thread vs the event loop).
        self._ledger = DeliveryLedger(durable=redelivery, loss_window_s=_ACK_LOSS_WINDOW_S)
        self._ack_lock = threading.Lock()
        self._up_ns: int | None = None  # connected since
        # Progress hold (see progress_bound): None, or the bound and since when it holds.
        self._hold: tuple[int, int] | None = None
        self._last_log: dict[str, float] = {}
        self._sparkplug: dict[str, SparkplugHost] = {}  # by sensor template (one per rule)
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        c = self.cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        if c.tls is not None:
            client.tls_set(
                ca_certs=str(c.tls.ca_file),
                certfile=None if c.tls.cert_file is None else str(c.tls.cert_file),
                keyfile=None if c.tls.key_file is None else str(c.tls.key_file),
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        lean_publish(client, lambda msg: self._on_message(client, None, msg))
        return client

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up."""
        return self._ledger.link is not Link.DOWN

    @property
    def duplicates(self) -> int:
        """Redelivered messages recognised and not ingested again."""
        return self._ledger.duplicates

    def start(self) -> None:
        """Connect in the background; paho's thread reconnects with backoff forever."""
        with self._ack_lock:
            self._hold = (0, time.time_ns())
        self._connect()

    def reconfigure(self, cfg: MqttSourceConfig) -> None:
        """Reconnect with new topics (same broker and client id), keeping the ledger.

        The broker keeps the session across the reconnect and resends what was
        in flight; the ledger recognises those messages as it does after a
        broker restart, so each is spooled exactly once. Progress is held from
        the disconnect until the link settled again.
        """
        self.stop()
        self.cfg = cfg
        self._routes = {}
        self._sparkplug = {}
        self._client = self._make_client()
        self._connect()

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = 65535
        self._client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect (the broker keeps the session) and join the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, tokens: list[AckToken]) -> None:
        """Send PUBACKs for messages whose readings are now durable, in one write.

        paho queues one packet (and wakes its thread) per ``Client.ack`` call;
        at 10,000 messages/s that costs more than receiving them. All
        PUBACKs of a batch are therefore concatenated into a single buffer on
        paho's output queue: the bytes on the wire are exactly what one
        ``ack`` per message would send.
        """
        if not tokens:
            return
        now = time.monotonic()
        with self._ack_lock:
            self._ledger.acked(tokens, now)
        pack = _PUBACK.pack
        packet = b"".join([pack(_PUBACK_HEADER, 2, mid) for mid, _ in tokens])
        queue_packet(self._client, _PUBACK_HEADER, packet)

    def progress_bound(self, now_ns: int, settle_ns: int, max_hold_ns: int) -> int | None:
        """The latest time the gateway may declare delivered because of this source.

        ``None``: no bound (connected for ``settle_ns``, or held ``max_hold_ns``
        already). While the broker may still hold messages for this session
        (disconnected, or reconnected less than ``settle_ns`` ago), the bound
        is when the link first went down; after a start it is 0 (no claim),
        since the previous run's last moment is unknown.
        """
        with self._ack_lock:
            if self._hold is None:
                return None
            bound, since = self._hold
            up = self._up_ns
            if (up is not None and now_ns - up >= settle_ns) or now_ns - since > max_hold_ns:
                self._hold = None
                return None
            return bound

    def _on_connect(self, client: paho.Client, _u: object, flags: Any, rc: Any, _p: object) -> None:
        if rc.is_failure:
            log.error("mqtt %s: broker refused the connection: %s", self.name, rc)
            self._metrics.source_errors.labels(self.name).inc()
            return
        buffer_reads(client)
        with self._ack_lock:
            self._ledger.connected(session_present=bool(flags.session_present))
            self._up_ns = time.time_ns()
        self._metrics.source_up.labels(self.name).set(1)
        log.info(
            "mqtt %s: connected to %s:%d (session present: %s)",
            self.name,
            self.cfg.host,
            self.cfg.port,
            flags.session_present,
        )
        client.subscribe([(r.filter, SubscribeOptions(qos=1)) for r in self.cfg.topics])

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        with self._ack_lock:
            if self._hold is None:
                now = time.time_ns()
                self._hold = (now, now)
            self._ledger.disconnected()
            self._up_ns = None
        self._metrics.source_up.labels(self.name).set(0)
        if rc.is_failure:
            self._metrics.source_errors.labels(self.name).inc()
            log.warning("mqtt %s: connection lost (%s); reconnecting", self.name, rc)

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception:  # a source must survive anything a publisher sends
            log.exception("mqtt %s: unexpected error handling a message", self.name)
            self._ingest.reject(
                UNMATCHED, PayloadReject.WRONG_SHAPE, (self, (msg.mid, 0)) if msg.qos else None
            )

    def _handle(self, msg: paho.MQTTMessage) -> None:
        topic_b, payload = raw_topic(msg), bytes(msg.payload)  # raw: no decode per message
        dig = digest(topic_b, payload)
        token = (self, (msg.mid, dig)) if msg.qos else None
        with self._ack_lock:
            delivery = self._ledger.received(msg.mid, dig, dup=bool(msg.dup), qos=msg.qos)
        if delivery is Delivery.DURABLE:
            if token is not None:
                self._ingest.pass_ack(token)
            return
        if delivery is Delivery.IN_PIPELINE:
            return
        target = self._lookup(topic_b)
        if target is PayloadReject.INVALID_UTF8:
            self._ingest.reject(UNMATCHED, PayloadReject.INVALID_UTF8, token)
            return
        if not isinstance(target, tuple):
            self._ingest.reject(UNMATCHED, PayloadReject.WRONG_SHAPE, token)
            return
        sensor, spec = target
        if spec.format is PayloadFormat.SPARKPLUG_B:
            self._sparkplug_message(sensor, topic_b, payload, token)
            return
        if spec.format in _NUMERIC_FIRST and len(payload) <= spec.max_bytes:
            try:
                value = float(payload)
            except ValueError:
                pass
            else:
                self._ingest.offer_one(self.name, sensor, time.time_ns(), value, token)
                return
        parsed = parse_payload(payload, spec, time.time_ns())
        if parsed.rejects:
            self._log_malformed(topic_b.decode("utf-8"), parsed.rejects[0], len(parsed.rejects))
        self._ingest.offer(self.name, sensor, parsed.readings, token, parsed.rejects)

    def _sparkplug_message(
        self, template: str, topic_b: bytes, payload: bytes, token: tuple[Any, AckToken] | None
    ) -> None:
        """One Sparkplug B message: readings, rejects, rebirth requests, stale sensors."""
        host = self._sparkplug.get(template)
        if host is None:
            host = self._sparkplug[template] = SparkplugHost(sensor_template=template)
        now = time.time_ns()
        got = host.receive(topic_b.decode("utf-8", errors="replace"), payload, now)
        self._ingest.offer_columns(
            self.name, got.sensors, got.stamps, got.values, got.rejects, ack=token
        )
        for node in got.rebirth:
            ncmd_topic, body = rebirth_request(node, now // 1_000_000)
            self._client.publish(ncmd_topic, body, qos=0)
            self._metrics.sparkplug_rebirths.labels(self.name).inc()
            log.info(
                "mqtt %s: asked Sparkplug node %s/%s to rebirth: %s", self.name, *node, got.reason
            )
        if got.stale or got.live:
            stale = sum(len(h.stale) for h in self._sparkplug.values())
            self._metrics.sparkplug_stale.labels(self.name).set(stale)

    def _lookup(self, topic_b: bytes) -> tuple[str, PayloadSpec] | PayloadReject | None:
        """The topic's (sensor, payload spec), None if no rule matches, or INVALID_UTF8."""
        if topic_b in self._routes:
            return self._routes[topic_b]
        try:
            topic = topic_b.decode("utf-8")
        except UnicodeDecodeError:
            return PayloadReject.INVALID_UTF8
        target = route(self.cfg.topics, topic)
        if target is not None and (
            self._ingest.declared(target[0]) or target[1].format is PayloadFormat.SPARKPLUG_B
        ):
            # only topics of declared sensors are cached: others are outside input
            if len(self._routes) > _ROUTE_CACHE:
                self._routes.clear()
            self._routes[topic_b] = target
        return target

    def _log_malformed(self, topic: str, reason: ItemReject, n: int) -> None:
        now = time.monotonic()
        if now - self._last_log.get(topic, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            if len(self._last_log) >= _LOG_TOPICS:
                self._last_log.clear()
            self._last_log[topic] = now
            log.warning(
                "mqtt %s: rejected %d item(s) on %r: %s (logged once per minute "
                "per topic; see gateway_readings_rejected_total)",
                self.name,
                n,
                topic,
                reason.value,
            )
