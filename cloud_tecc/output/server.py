"""The output service process: result intake, attestation watch and the JSON API.

``POST /v1/results`` accepts an encrypted, signed share vector from an
attested party (refused otherwise). The JSON API serves released rows only:
``GET /api/v1/health``, ``/api/v1/clusters``, ``/api/v1/sensors``,
``/api/v1/windows?sensor=&gateway=&since=``, ``/api/v1/alerts?since=``,
``/api/v1/fleet?class=&since=`` and ``/api/v1/epochs``; ``since`` is in Unix
seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from cloud_tecc.config import OutputConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory, build_verifier
from cloud_tecc.errors import AnalyticsError, PeerError
from cloud_tecc.output.collector import try_complete, validate_submission
from cloud_tecc.output.dashboard import GatewayHealth, attach_dashboard
from cloud_tecc.output.store import ResultStore
from cloud_tecc.service.base import ServiceBase
from cloud_tecc.service.channel import open_message, sender_of
from tecc_contract.keys import KemSuite

log = logging.getLogger("cloud_tecc.output")
RESULTS_PURPOSE = "results"
_MAX_SINCE_S = 9.2e9


def _since_ns(request: web.Request) -> int:
    raw = request.query.get("since", "")
    if not raw:
        return 0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not abs(seconds) < _MAX_SINCE_S:  # NaN, ±inf and values beyond int64 nanoseconds
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "since must be Unix seconds (a number)"}),
            content_type="application/json",
        )
    return int(seconds * 1e9)


class OutputService(ServiceBase):
    """Reconstructs approved results from the parties' shares and serves them."""

    def __init__(self, cfg: OutputConfig, enclave: Enclave) -> None:
        super().__init__(cfg.service, enclave)
        self.ocfg = cfg
        self.store = ResultStore(cfg.service.state_dir / "results.db")
        self.session: aiohttp.ClientSession | None = None
        self.directory: AttestedDirectory | None = None
        reg = self.registry
        self.received = Counter(
            "tecc_output_submissions", "Result submissions accepted", ["party"], registry=reg
        )
        self.epochs = Counter("tecc_output_epochs", "Epochs reconstructed", registry=reg)
        self.latency = Histogram(
            "tecc_output_window_latency_seconds",
            "End of window to result stored",
            registry=reg,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.attested = Gauge(
            "tecc_output_attested_clusters", "Clusters passing attestation", registry=reg
        )
        r = self.app.router
        r.add_post("/v1/results", self._results)
        r.add_get("/api/v1/health", self._api_health)
        r.add_get("/api/v1/clusters", self._api_clusters)
        r.add_get("/api/v1/sensors", self._api_sensors)
        r.add_get("/api/v1/windows", self._api_windows)
        r.add_get("/api/v1/alerts", self._api_alerts)
        r.add_get("/api/v1/fleet", self._api_fleet)
        r.add_get("/api/v1/epochs", self._api_epochs)
        self.gateway_health = GatewayHealth(cfg.gateways)
        attach_dashboard(
            self.app, change_marker=self.store.change_marker, gateways=self.gateway_health
        )

    async def on_start(self) -> None:
        """Open the HTTP client and start watching the clusters' attestation."""
        self.session = aiohttp.ClientSession()
        verifier = build_verifier(self.cfg.trust, self.enclave.platform, self.enclave.measurement)
        self.directory = AttestedDirectory(
            verifier, self.session, refresh_s=self.cfg.trust.refresh_s
        )
        self.spawn(self._watch(), "attestation-watch")
        if self.ocfg.gateways:
            self.spawn(self.gateway_health.run(self.session), "gateway-health")

    async def on_stop(self) -> None:
        """Close client and database."""
        if self.session is not None:
            await self.session.close()
        self.store.close()

    async def _watch(self) -> None:
        assert self.directory is not None
        last: dict[str, str] = {}
        while True:
            ok = 0
            for ep in self.ocfg.parties.values():
                try:
                    await self.directory.identity(ep, "party", force=True)
                    ok += 1
                    detail = "attested"
                except PeerError as exc:
                    detail = str(exc)
                if detail != last.get(ep.service_id):
                    level = logging.INFO if detail == "attested" else logging.WARNING
                    log.log(level, "cluster %s: %s", ep.service_id, detail)
                    last[ep.service_id] = detail
            self.attested.set(ok)
            await asyncio.sleep(min(self.cfg.trust.refresh_s, 5.0))

    async def _results(self, request: web.Request) -> web.Response:
        assert self.directory is not None
        try:
            envelope = await request.json()
            sender = sender_of(envelope)
            party = next(
                (i for i, ep in self.ocfg.parties.items() if ep.service_id == sender), None
            )
            if party is None:
                raise PeerError(f"{sender!r} is not a configured cluster")
            ident = await self.directory.identity(self.ocfg.parties[party], "party")
            body = open_message(
                envelope,
                purpose=RESULTS_PURPOSE,
                sender=ident,
                suite=KemSuite(self.enclave.keys.suite),
                private_key=self.enclave.keys.hpke,
            )
            doc = json.loads(body)
            layout, vector = doc["layout"], base64.b64decode(doc["vector"], validate=True)
            validate_submission(self.cfg.policy, layout, vector)
        except (PeerError, AnalyticsError, ValueError, KeyError, TypeError, RecursionError) as exc:
            reason = "attestation" if isinstance(exc, PeerError) else "malformed"
            self.errors.labels("results", reason).inc()
            log.warning("refused results: %s", exc)
            return web.json_response(
                {"error": str(exc)}, status=403 if reason == "attestation" else 400
            )
        epoch = int(layout["epoch_ns"])
        await asyncio.to_thread(self.store.put_pending, epoch, party, layout, vector)
        self.received.labels(str(party)).inc()
        try:
            done = try_complete(
                self.cfg.policy,
                len(self.ocfg.parties),
                await asyncio.to_thread(self.store.pending, epoch),
            )
        except AnalyticsError as exc:
            self.errors.labels("results", "inconsistent").inc()
            log.warning("epoch %s not reconstructed: %s", epoch, exc)
            return web.json_response({"status": "inconsistent"}, status=202)
        if done is not None:
            now = time.time_ns()
            await asyncio.to_thread(
                self.store.store_epoch, done.epoch_ns, done.window_ns, done.rows, now
            )
            self.epochs.inc()
            self.latency.observe(max(now - done.epoch_ns - done.window_ns, 0) / 1e9)
        return web.json_response({"status": "stored" if done else "pending"})

    def health(self) -> dict[str, Any]:
        """Health plus attestation summary."""
        doc = super().health()
        statuses = self.directory.status.values() if self.directory else []
        doc["clusters_attested"] = sum(1 for s in statuses if s.ok)
        return doc

    async def _api_health(self, _r: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def _api_clusters(self, _r: web.Request) -> web.Response:
        out = []
        status = self.directory.status if self.directory else {}
        for i, ep in sorted(self.ocfg.parties.items()):
            st = status.get(ep.service_id)
            out.append(
                {
                    "party": i,
                    "service_id": ep.service_id,
                    "url": ep.url,
                    "attested": bool(st and st.ok),
                    "detail": st.detail if st else "not checked yet",
                    "measurement": st.measurement if st else "",
                    "checked_ns": st.checked_ns if st else None,
                }
            )
        return web.json_response(out)

    async def _api_sensors(self, _r: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.store.sensors))

    async def _api_windows(self, r: web.Request) -> web.Response:
        rows = await asyncio.to_thread(
            self.store.windows, r.query.get("sensor"), r.query.get("gateway"), _since_ns(r)
        )
        for row in rows:
            row["deviates_from_fleet"] = None if row["deviates"] is None else bool(row["deviates"])
            del row["deviates"]
        return web.json_response(rows)

    async def _api_alerts(self, r: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.store.alerts, _since_ns(r)))

    async def _api_fleet(self, r: web.Request) -> web.Response:
        return web.json_response(
            await asyncio.to_thread(self.store.fleet, r.query.get("class"), _since_ns(r))
        )

    async def _api_epochs(self, _r: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.store.epochs))
