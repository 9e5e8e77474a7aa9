"""OPC-UA source: asyncua subscriptions (never polling) feeding the ingest hand-off.

Each connection attempt uses a fresh :class:`asyncua.Client`: connect (with
the gateway certificate under Basic256Sha256 if configured, the application
URI from that certificate and the server certificate pinned,
:mod:`gateway.sources.opcua_trust`), resolve the configured nodes and browse
the configured folders, create one subscription and its monitored items in
batches of ``subscribe_batch``, then watch the server state. On any failure
the client is discarded and the source retries after an exponential backoff
with jitter — capped at 2 s while the endpoint accepts TCP (the server is up
but refused us: retry soon), and cut short the moment a server that was down
accepts TCP again (probed every 0.5 s), so the subscription is back within
about a second of the server's return instead of after the grown backoff.

Every monitored item uses a DataChangeFilter with the trigger
StatusValueTimestamp: a sensor that repeats its value with a new source
timestamp (a stuck sensor) is still reported, instead of going silent.

Notifications are handled in :class:`_BulkSubscription.publish_callback`,
which walks a whole PublishResponse synchronously and hands all rows to
:meth:`~gateway.ingest.Ingest.offer_rows` in one call: no task, no await and
no object per data change. (This overrides one method of asyncua's
``Subscription`` and uses its private request builder through
:mod:`gateway.sources.upstream`; both are checked against the pinned
asyncua.) A node whose status is bad is counted (as a
``bad_status`` rejection and in ``gateway_opcua_bad_nodes``) and reported;
the others keep streaming.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client, _first_cert_from_chain
from asyncua.common.node import Node
from asyncua.common.subscription import Subscription
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds

from gateway.config import (
    DeadbandType,
    NodeOptions,
    OpcuaSourceConfig,
    SecurityMode,
    SecurityPolicy,
)
from gateway.errors import GatewayConfigError
from gateway.ingest import Ingest, Reason
from gateway.metrics import Metrics
from gateway.sources.opcua_trust import (
    ServerPin,
    advice,
    application_uri,
    endpoint_answers,
    status_name,
)
from gateway.sources.upstream import monitored_item_request
from tecc_contract.errors import RejectReason

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WATCH_S = 2.0
_RETRY_WHILE_UP_S = 2.0  # backoff cap while the endpoint accepts TCP
_PROBE_S = 0.5  # how often a down endpoint is probed during the backoff


def _ns(dt: datetime | None, now_ns: int) -> int:
    if dt is None:
        return now_ns
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class _BulkSubscription(Subscription):
    """A subscription whose publish callback hands whole notification lists to Ingest."""

    def __init__(self, session: Any, params: Any, source: OpcuaSource) -> None:
        super().__init__(session, params, handler=None, queue_maxsize=1)
        self._source = source
        self._sensor_by_handle: dict[int, str] = {}

    async def publish_callback(self, publish_result: Any) -> None:
        self.last_publish_at = time.monotonic()
        msg = publish_result.NotificationMessage
        if msg.NotificationData is None:
            return
        self.last_sequence_number = int(msg.SequenceNumber)
        for notif in msg.NotificationData:
            if isinstance(notif, ua.DataChangeNotification):
                self._source.deliver(self._rows(notif))
            elif isinstance(notif, ua.StatusChangeNotification):
                log.warning(
                    "opcua %s: subscription status changed: %s", self._source.name, notif.Status
                )

    def _rows(self, notif: Any) -> tuple[list[tuple[str, int, object]], list[tuple[str, Reason]]]:
        now_ns = time.time_ns()
        rows: list[tuple[str, int, object]] = []
        bad: list[tuple[str, Reason]] = []
        by_handle = self._sensor_by_handle
        for item in notif.MonitoredItems:
            sensor = by_handle.get(item.ClientHandle)
            if sensor is None:
                data = self._monitored_items.get(item.ClientHandle)
                if data is None or data.node is None:
                    continue
                sensor = self._source.sensor_for(data.node.nodeid)
                by_handle[item.ClientHandle] = sensor
            dv = item.Value
            if dv is None or (dv.StatusCode is not None and not dv.StatusCode.is_good()):
                bad.append((sensor, RejectReason.BAD_STATUS))
                self._source.mark_bad(sensor, None if dv is None else dv.StatusCode)
                continue
            value = dv.Value.Value if dv.Value is not None else None
            rows.append((sensor, _ns(dv.SourceTimestamp or dv.ServerTimestamp, now_ns), value))
        return rows, bad


def _filter(opts: NodeOptions) -> Any:
    """StatusValueTimestamp trigger (repeated values are reported), plus the deadband."""
    f = ua.DataChangeFilter()
    f.Trigger = ua.DataChangeTrigger.StatusValueTimestamp
    if opts.deadband is DeadbandType.NONE:
        f.DeadbandType = 0
        f.DeadbandValue = 0.0
    else:
        f.DeadbandType = 1 if opts.deadband is DeadbandType.ABSOLUTE else 2
        f.DeadbandValue = opts.deadband_value
    return f


class OpcuaSource:
    """One OPC-UA server connection, reconnected forever until cancelled."""

    def __init__(
        self,
        cfg: OpcuaSourceConfig,
        ingest: Ingest,
        metrics: Metrics,
        *,
        sensors: set[str],
        state_dir: Path | None = None,
        gateway_id: str = "gateway",
        private_key: bytes | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._uri = application_uri(cfg.security, gateway_id)
        self._pin = ServerPin(cfg.security, state_dir, cfg.name)
        self._private_key = private_key  # decrypted sealed key, or None: read the file
        self._ingest = ingest
        self._metrics = metrics
        self._declared = sensors
        self._rand = rand
        self._by_node: dict[str, str] = {}
        self._bad: set[str] = set()
        self.connected = False
        self.subscribed = 0

    def sensor_for(self, nodeid: Any) -> str:
        """The sensor id a subscribed node feeds."""
        return self._by_node.get(nodeid.to_string(), f"opcua:{nodeid.to_string()}")

    def mark_bad(self, sensor: str, code: object = None) -> None:
        """Remember a node that reported a bad status (exported as a gauge)."""
        if sensor not in self._bad:
            self._bad.add(sensor)
            self._metrics.opcua_bad_nodes.labels(self.name).set(len(self._bad))
            log.warning(
                "opcua %s: node for sensor %s reports a bad status (%s)",
                self.name,
                sensor,
                "no value" if code is None else status_name(code),
            )

    def deliver(
        self, rows_bad: tuple[list[tuple[str, int, object]], list[tuple[str, Reason]]]
    ) -> None:
        """Hand one notification list to the ingest buffer (synchronous, never blocks)."""
        rows, bad = rows_bad
        self._ingest.offer_rows(self.name, rows, bad)

    async def run(self) -> None:
        """Connect, subscribe and watch; reconnect with backoff and jitter on failure."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: new client, retry
                self._metrics.source_errors.labels(self.name).inc()
                msg = advice(exc, self.cfg.security, self._uri, self._pin)
                log.warning("opcua %s: %s; reconnecting", self.name, msg)
            finally:
                self.connected = False
                self.subscribed = 0
                self._metrics.source_up.labels(self.name).set(0)
            attempt = 0 if time.monotonic() - started > 60 else attempt + 1
            cap = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** min(attempt, 20))
            await self._backoff(cap * (0.5 + 0.5 * self._rand()))

    async def _backoff(self, delay: float) -> None:
        """Wait before the next attempt; short while the endpoint is up, ended when it returns."""
        up = await endpoint_answers(self.cfg.url)
        if up:
            delay = min(delay, _RETRY_WHILE_UP_S)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _PROBE_S))
            if not up and await endpoint_answers(self.cfg.url):
                return  # the server is back: retry now, not after the grown backoff

    async def _secure(self, client: Client) -> None:
        """Basic256Sha256 with our certificate, URI and the trusted server certificate."""
        sec = self.cfg.security
        if sec.certificate is None or sec.private_key is None:
            raise GatewayConfigError(
                "OPC-UA Basic256Sha256 needs certificate and private_key paths"
            )
        mode = (
            ua.MessageSecurityMode.Sign
            if sec.mode is SecurityMode.SIGN
            else ua.MessageSecurityMode.SignAndEncrypt
        )
        client.application_uri = self._uri
        endpoints = await client.connect_and_get_server_endpoints()
        endpoint = Client.find_endpoint(endpoints, mode, SecurityPolicyBasic256Sha256.URI)
        presented = _first_cert_from_chain(endpoint.ServerCertificate)
        self._pin.check(presented)
        key: Any = str(sec.private_key)
        if self._private_key is not None:
            pem = self._private_key.lstrip().startswith(b"-----")
            key = uacrypto.CertProperties(self._private_key, "pem" if pem else "der")
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=str(sec.certificate),
            private_key=key,
            server_certificate=presented,
            mode=mode,
        )

    async def _session(self) -> None:
        client = Client(self.cfg.url, timeout=10)
        secure = self.cfg.security.policy is SecurityPolicy.BASIC256SHA256
        if secure:
            await self._secure(client)
        await client.connect()
        if secure and self._pin.record(client.security_policy.peer_certificate):
            log.info(
                "opcua %s: server certificate pinned at first use in %s",
                self.name,
                self._pin.path,
            )
        try:
            self.connected = True
            self._metrics.source_up.labels(self.name).set(1)
            await self._subscribe(client)
            state = client.get_node(ua.object_ids.ObjectIds.Server_ServerStatus_State)
            while True:
                await asyncio.sleep(_WATCH_S)
                async with asyncio.timeout(_WATCH_S * 2):
                    await state.read_value()
        finally:
            try:
                async with asyncio.timeout(2):
                    await client.disconnect()
            except Exception:
                log.debug("opcua %s: disconnect after failure also failed", self.name)

    async def _targets(self, client: Client) -> list[tuple[Node, str, NodeOptions]]:
        out = [(client.get_node(n.node_id), n.sensor, n.options) for n in self.cfg.nodes]
        for b in self.cfg.browse:
            folder = client.get_node(b.folder)
            for child in await folder.get_children(nodeclassmask=ua.NodeClass.Variable):
                name = (await child.read_browse_name()).Name
                sensor = b.sensor_template.format(name=name)
                if sensor in self._declared:
                    out.append((child, sensor, b.options))
                else:
                    log.info(
                        "opcua %s: skipping %s (sensor %r is not declared)",
                        self.name,
                        child.nodeid.to_string(),
                        sensor,
                    )
        return out

    async def _subscribe(self, client: Client) -> None:
        targets = await self._targets(client)
        self._by_node = {node.nodeid.to_string(): sensor for node, sensor, _ in targets}
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.cfg.publishing_ms
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(self.cfg.publishing_ms)
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        sub = _BulkSubscription(client.uaclient.session, params, self)
        await sub.init()
        failed = 0
        step = self.cfg.subscribe_batch
        for i in range(0, len(targets), step):
            chunk = targets[i : i + step]
            mirs = [
                monitored_item_request(
                    sub,
                    node,
                    attr=AttributeIds.Value,
                    mfilter=_filter(opts),
                    queue_size=opts.queue_size,
                    mode=ua.MonitoringMode.Reporting,
                    sampling_ms=opts.sampling_ms,
                )
                for node, _, opts in chunk
            ]
            results = await sub.create_monitored_items(mirs)
            for (node, sensor, _), res in zip(chunk, results, strict=True):
                if isinstance(res, ua.StatusCode):
                    failed += 1
                    self.mark_bad(sensor)
                    log.warning(
                        "opcua %s: cannot monitor %s (%s): %s",
                        self.name,
                        node.nodeid.to_string(),
                        sensor,
                        status_name(res),
                    )
        self.subscribed = len(targets) - failed
        log.info("opcua %s: subscribed %d node(s), %d failed", self.name, self.subscribed, failed)
