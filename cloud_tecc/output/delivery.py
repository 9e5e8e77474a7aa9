"""Delivering incidents where engineers already look: Alertmanager, webhooks, MQTT.

One :class:`Deliverer` task per configured target drains that target's
outbox cursor (:mod:`cloud_tecc.output.outbox`) in order: send, mark
delivered; on failure back off (jittered, randomness from ``random.SystemRandom``
passed in) and retry, or dead-letter a permanent refusal. The outbox is in the
output's SQLite store, so a restart resumes where delivery stopped; a
transition delivered but not yet marked is sent again after a crash — hence
the idempotency key (webhooks) and idempotent alert identity (Alertmanager:
the same labels are the same alert).

Alertmanager targets also re-send every live incident every ``refresh_s``:
Alertmanager resolves an alert that is not refreshed within its ``endsAt``.

Config (``delivery:`` in the output file)::

    delivery:
      alertmanager: [{name: am, url: "http://127.0.0.1:9093"}]
      webhooks: [{name: ops, url: "https://ops.example/hook", secret_file: hook.secret}]
      mqtt: [{name: scada, host: 127.0.0.1, port: 1883,
              topic: "tecc/incidents/{gateway}/{sensor}/{detector}", format: json}]
      retry: {base_s: 1, max_s: 300, max_attempts: 50, dead_letter_max: 1000}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

import aiohttp
import msgspec
import paho.mqtt.client as paho
from msgspec import Meta
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.output import outbox, targets
from cloud_tecc.output.outbox import Pending, Retry

log = logging.getLogger("cloud_tecc.output.delivery")
_SYSRAND = random.SystemRandom()

TargetName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Seconds = Annotated[float, Meta(gt=0, le=86_400)]


class _Schema(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class AlertmanagerTarget(_Schema, frozen=True, kw_only=True):
    """``delivery.alertmanager[]``: an Alertmanager (API v2)."""

    name: TargetName
    url: Annotated[str, Meta(pattern=r"^https?://")]
    refresh_s: Seconds = 60.0
    timeout_s: Seconds = 5.0
    dashboard_url: str = ""


class WebhookTarget(_Schema, frozen=True, kw_only=True):
    """``delivery.webhooks[]``: an HTTP(S) endpoint; ``secret_file`` holds the HMAC key."""

    name: TargetName
    url: Annotated[str, Meta(pattern=r"^https?://")]
    secret_file: Annotated[str, Meta(min_length=1)]
    timeout_s: Seconds = 5.0


class MqttTarget(_Schema, frozen=True, kw_only=True):
    """``delivery.mqtt[]``: a broker and topic template (plain JSON or Sparkplug B)."""

    name: TargetName
    host: Annotated[str, Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    topic: Annotated[str, Meta(min_length=1)] = "tecc/incidents/{gateway}/{sensor}/{detector}"
    format: targets.MqttFormat = targets.MqttFormat.JSON
    qos: Annotated[int, Meta(ge=0, le=1)] = 1
    client_id: str = ""
    timeout_s: Seconds = 5.0


class RetryDoc(_Schema, frozen=True, kw_only=True):
    """``delivery.retry``: backoff and bounds, shared by every target."""

    base_s: Seconds = 1.0
    max_s: Seconds = 300.0
    max_attempts: Annotated[int, Meta(ge=1, le=10_000)] = 50
    dead_letter_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    backlog_s: Seconds = 86_400.0


class DeliveryConfig(_Schema, frozen=True, kw_only=True):
    """``delivery:`` every target of incident transitions; names unique."""

    alertmanager: tuple[AlertmanagerTarget, ...] = ()
    webhooks: tuple[WebhookTarget, ...] = ()
    mqtt: tuple[MqttTarget, ...] = ()
    retry: RetryDoc = RetryDoc()

    def __post_init__(self) -> None:
        names = [
            *(t.name for t in self.alertmanager),
            *(t.name for t in self.webhooks),
            *(t.name for t in self.mqtt),
        ]
        if len(set(names)) != len(names):
            raise ValueError(f"delivery target names must be unique, got {names}")

    @property
    def policy(self) -> Retry:
        """The retry policy of the outbox."""
        r = self.retry
        return Retry(r.base_s, r.max_s, r.max_attempts, r.dead_letter_max, r.backlog_s)


class DeliveryError(Exception):
    """A delivery attempt failed; ``permanent`` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sender(Protocol):
    """Sends one transition; raises :class:`DeliveryError`."""

    name: str

    async def send(self, item: Pending, now_ns: int) -> None:
        """Deliver ``item`` or raise."""

    async def close(self) -> None:
        """Release connections."""


def _http_refusal(status: int, text: str) -> DeliveryError:
    permanent = 400 <= status < 500 and status not in (408, 425, 429)
    return DeliveryError(f"HTTP {status}: {text[:200]}", permanent=permanent)


class AlertmanagerSender:
    """Posts alerts to ``/api/v2/alerts``."""

    def __init__(self, cfg: AlertmanagerTarget, session: aiohttp.ClientSession) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._session = session

    async def post(self, incidents: Sequence[dict[str, Any]], now_ns: int) -> None:
        """Post the alerts of ``incidents`` (a refresh or one transition)."""
        hold = self.cfg.refresh_s * 3
        body = [
            targets.alert(i, now_ns, hold_s=hold, dashboard=self.cfg.dashboard_url)
            for i in incidents
        ]
        url = self.cfg.url.rstrip("/") + "/api/v2/alerts"
        try:
            async with self._session.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            ) as r:
                if r.status // 100 != 2:
                    raise _http_refusal(r.status, await r.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None

    async def send(self, item: Pending, now_ns: int) -> None:
        """One transition is one alert in its new state."""
        await self.post([item.incident], now_ns)

    async def close(self) -> None:
        """The session is shared."""


class WebhookSender:
    """Posts signed JSON bodies."""

    def __init__(self, cfg: WebhookTarget, session: aiohttp.ClientSession, base: Path) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._session = session
        self._secret = (base / cfg.secret_file).read_bytes().strip()

    async def send(self, item: Pending, now_ns: int) -> None:
        """POST the transition with its idempotency key and signature."""
        body = targets.webhook_body(item.key, item.incident)
        headers = targets.webhook_headers(self._secret, item.key, body, now_ns // 1_000_000_000)
        try:
            async with self._session.post(
                self.cfg.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            ) as r:
                if r.status // 100 != 2:
                    raise _http_refusal(r.status, await r.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        """The session is shared."""


class MqttSender:
    """Publishes to a broker with paho (QoS 1: delivered once the broker's PUBACK is in)."""

    def __init__(self, cfg: MqttTarget) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"tecc-output-{cfg.name}",
            protocol=paho.MQTTv5,
        )
        self._client.reconnect_delay_set(1, 5)
        self._connected = threading.Event()
        self._client.on_connect = lambda *_a: self._connected.set()
        self._client.on_disconnect = lambda *_a: self._connected.clear()
        self._started = False

    async def send(self, item: Pending, now_ns: int) -> None:
        """Publish and wait for the broker's acknowledgement."""
        if not self._started:
            self._client.connect_async(self.cfg.host, self.cfg.port)
            self._client.loop_start()
            self._started = True
        ok = await asyncio.to_thread(self._connected.wait, self.cfg.timeout_s)
        if not ok:
            raise DeliveryError(f"broker {self.cfg.host}:{self.cfg.port} not connected")
        topic = targets.mqtt_topic(self.cfg.topic, item.incident)
        payload = targets.mqtt_payload(self.cfg.format, item.key, item.incident, now_ns)
        info = self._client.publish(topic, payload, qos=self.cfg.qos)
        await asyncio.to_thread(info.wait_for_publish, self.cfg.timeout_s)
        if not info.is_published():
            raise DeliveryError(
                f"no PUBACK from {self.cfg.host}:{self.cfg.port} within the timeout"
            )

    async def close(self) -> None:
        """Disconnect."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()


class Metrics:
    """Per-target delivery counters and gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "tecc_output_deliveries",
            "Incident transitions delivered",
            ["target"],
            registry=registry,
        )
        self.failed = Counter(
            "tecc_output_delivery_failures",
            "Failed delivery attempts",
            ["target"],
            registry=registry,
        )
        self.pending = Gauge(
            "tecc_output_delivery_pending",
            "Transitions waiting per target",
            ["target"],
            registry=registry,
        )
        self.dead = Gauge(
            "tecc_output_delivery_dead", "Dead letters per target", ["target"], registry=registry
        )


class Deliverer:
    """Runs every target's delivery loop against one outbox database."""

    def __init__(
        self,
        cfg: DeliveryConfig,
        db_path: Path,
        registry: CollectorRegistry,
        *,
        base: Path,
        live_incidents: Callable[[], list[dict[str, Any]]] = list,
        rand: Callable[[], float] = _SYSRAND.random,
        clock_ns: Callable[[], int] = time.time_ns,
        poll_s: float = 0.5,
    ) -> None:
        self.cfg = cfg
        self.retry = cfg.policy
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        outbox.create(self._db)
        self._lock = threading.Lock()
        self._base = base
        self._live = live_incidents
        self._rand = rand
        self._clock = clock_ns
        self._poll_s = poll_s
        self.metrics = Metrics(registry)
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.senders: list[Sender] = []

    def wake(self) -> None:
        """New transitions were recorded: look now instead of at the next poll."""
        self._wake.set()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per target: counts by state and the newest dead letters."""
        with self._lock:
            cur = self._db.cursor()
            return {
                s.name: {
                    **outbox.stats(cur, s.name),
                    "dead_letters": outbox.dead_letters(cur, s.name, 20),
                }
                for s in self.senders
            }

    def replay(self, target: str) -> int:
        """Re-queue the dead letters of ``target``; how many."""
        with self._lock:
            n = outbox.replay(self._db.cursor(), target, self._clock())
        self.wake()
        return n

    async def run(self) -> None:
        """Deliver until cancelled."""
        self._session = aiohttp.ClientSession()
        self.senders = [
            *(AlertmanagerSender(c, self._session) for c in self.cfg.alertmanager),
            *(WebhookSender(c, self._session, self._base) for c in self.cfg.webhooks),
            *(MqttSender(c) for c in self.cfg.mqtt),
        ]
        refresh_due = {s.name: 0.0 for s in self.senders}
        try:
            while True:
                for sender in self.senders:
                    await self._drain(sender)
                    if isinstance(sender, AlertmanagerSender):
                        await self._refresh(sender, refresh_due)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
        finally:
            for s in self.senders:
                await s.close()
            await self._session.close()

    async def _drain(self, sender: Sender) -> None:
        now = self._clock()
        with self._lock:
            cur = self._db.cursor()
            outbox.enqueue(cur, sender.name, now, self.retry)
            items = outbox.due(cur, sender.name, now)
        for item in items:
            try:
                await sender.send(item, self._clock())
            except DeliveryError as exc:
                self.metrics.failed.labels(sender.name).inc()
                with self._lock:
                    state = outbox.failed(
                        self._db.cursor(),
                        sender.name,
                        item,
                        error=str(exc),
                        now_ns=self._clock(),
                        retry=self.retry,
                        jitter=0.5 + 0.5 * self._rand(),
                        permanent=exc.permanent,
                    )
                log.warning("delivery %s: %s %s: %s", sender.name, item.key, state.value, exc)
                if state is outbox.DeliveryState.PENDING:
                    break  # head of line: keep the order, retry after the backoff
                continue
            with self._lock:
                outbox.delivered(self._db.cursor(), sender.name, item.seq, self._clock())
            self.metrics.delivered.labels(sender.name).inc()
        with self._lock:
            counts = outbox.stats(self._db.cursor(), sender.name)
        self.metrics.pending.labels(sender.name).set(counts["pending"])
        self.metrics.dead.labels(sender.name).set(counts["dead"])

    async def _refresh(self, sender: AlertmanagerSender, due: dict[str, float]) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < due[sender.name]:
            return
        due[sender.name] = loop.time() + sender.cfg.refresh_s
        live = [i for i in self._live() if i.get("state") in ("open", "acknowledged")]
        if not live:
            return
        try:
            await sender.post(live, self._clock())
        except DeliveryError as exc:
            self.metrics.failed.labels(sender.name).inc()
            log.warning("delivery %s: refresh of %d alerts failed: %s", sender.name, len(live), exc)
            due[sender.name] = loop.time() + min(sender.cfg.refresh_s, 5.0)

    def close(self) -> None:
        """Close the database."""
        self._db.close()
