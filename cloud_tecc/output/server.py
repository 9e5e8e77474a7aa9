"""The output service process: result intake, attestation watch, incidents and the JSON API.

``POST /v1/results`` accepts an encrypted, signed share vector from an
attested party (refused otherwise), newer than any message that party sent
for the epoch (``seq``), so a replay can neither roll an epoch back nor park
shares of an epoch already stored. Each new epoch's flags go through the
incident tracker. The JSON API (``api.py``) serves released rows and
incidents only, to authenticated readers (``gate.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from cloud_tecc.analytics.layout import ReleaseLayout, as_layout, layout_doc
from cloud_tecc.config import OutputConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory, build_verifier
from cloud_tecc.errors import AnalyticsError, PeerError
from cloud_tecc.output.api import ReadApi
from cloud_tecc.output.auth import LocalTokens, Principal, Role, write_signin_link
from cloud_tecc.output.clusterhealth import ClusterHealth
from cloud_tecc.output.collector import (
    LayoutChecks,
    decode_result,
    try_complete,
    validate_submission,
    withhold_fleet,
)
from cloud_tecc.output.dashboard import ChangeNotifier, GatewayHealth, attach_dashboard
from cloud_tecc.output.delivery import Deliverer
from cloud_tecc.output.enrolment_view import EnrolmentView
from cloud_tecc.output.export_api import ExportApi
from cloud_tecc.output.gate import Gate, tls_context
from cloud_tecc.output.incident_rows import IncidentQuery
from cloud_tecc.output.incidents import Incident, State, attestation_changes
from cloud_tecc.output.oidc import OidcClient
from cloud_tecc.output.ops import serve_intake, serve_ops
from cloud_tecc.output.signin import SignIn
from cloud_tecc.output.store import ResultStore
from cloud_tecc.output.tracking import Key, Tracked, track
from cloud_tecc.service.base import ServiceBase
from cloud_tecc.service.channel import open_message, sender_of
from tecc_contract.keys import KemSuite

log = logging.getLogger("cloud_tecc.output")
RESULTS_PURPOSE = "results"
_PRUNE_S = 60.0


class OutputService(ServiceBase):
    """Reconstructs approved results from the parties' shares and serves them."""

    def __init__(self, cfg: OutputConfig, enclave: Enclave) -> None:
        super().__init__(cfg.service, enclave)
        self.ocfg = cfg
        self.store = ResultStore(cfg.service.state_dir / "results.db")
        self.layout_checks = LayoutChecks(cfg.service.policy, len(cfg.parties))
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
        self.incidents_opened = Counter(
            "tecc_output_incidents", "Incidents stored, by state reached", ["state"], registry=reg
        )
        self.tokens = LocalTokens(cfg.service.state_dir)
        self.admin_token = self.tokens.bootstrap()
        oidc = OidcClient(cfg.auth.oidc) if cfg.auth.oidc is not None else None
        self.gate = Gate(
            cfg.auth,
            listen_host=cfg.service.host,
            tokens=self.tokens,
            oidc=oidc,
        )
        self.app.middlewares.append(self.gate.middleware)
        if self.gate.tls:
            names = [cfg.service.host, *cfg.auth.allowed_hosts]
            self.ssl_context = tls_context(cfg.auth, cfg.service.state_dir, names)
        r = self.app.router
        r.add_post("/v1/results", self._results)
        r.add_get("/api/v1/health", self._api_health)
        r.add_get("/api/v1/clusters", self._api_clusters)
        r.add_get("/api/v1/tokens", self._api_tokens)
        r.add_post("/api/v1/tokens", self._api_new_token)
        self.notifier = ChangeNotifier()
        d = cfg.delivery
        self.deliverer = (
            Deliverer(
                d,
                cfg.service.state_dir / "results.db",
                self.registry,
                base=cfg.config_dir,
                live_incidents=self._live_incidents,
            )
            if (d.alertmanager or d.webhooks or d.mqtt)
            else None
        )
        ReadApi(self.store, self._changed, cfg.units).attach(self.app)
        ExportApi(self.store, self.deliverer).attach(self.app)
        SignIn(self.gate).attach(self.app)
        self.gateway_health = GatewayHealth(cfg.gateways)
        self.cluster_health = ClusterHealth(cfg.workers, window_ns=cfg.service.policy.window_ns)
        attach_dashboard(self.app, notifier=self.notifier, gateways=self.gateway_health)
        self.enrolment = EnrolmentView(
            cfg.parties, service_id=cfg.service.service_id, enclave=enclave
        )
        self.enrolment.attach(self.app)
        self._runners: list[web.AppRunner] = []
        self._completing = asyncio.Lock()  # one reconstruction at a time: an epoch is new once
        #: (party, shard) -> newest epoch that party's worker of that shard released (memory).
        self.releases: dict[tuple[int, int], int] = {}
        self.signin_link()  # before the listener is up: whoever sees it healthy finds the link

    def signin_link(self) -> Path:
        """Write a one-time admin sign-in link for the local browser; its path."""
        scheme = "https" if self.gate.tls else "http"
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        code = self.gate.sessions.one_time_code(Principal("admin", Role.ADMIN, "link"))
        url = f"{scheme}://{host}:{self.cfg.port}/auth/once?code={code}"
        return write_signin_link(self.cfg.state_dir, url)

    async def on_start(self) -> None:
        """Open the HTTP client and start watching the clusters' attestation."""
        self.session = aiohttp.ClientSession()
        if self.gate.oidc is not None:
            self.gate.oidc.bind(self.session)
        if self.admin_token is not None:
            log.info("created the admin API token in %s", self.admin_token)
        auth = self.ocfg.auth
        if auth.ops_port:
            self._runners.append(await serve_ops(self, auth.ops_host, auth.ops_port))
        if auth.intake_port:
            self._runners.append(
                await serve_intake(
                    self._attestation, self._results, auth.intake_host, auth.intake_port
                )
            )
        self.spawn(self._prune(), "retention")
        if self.deliverer is not None:
            self.spawn(self.deliverer.run(), "delivery")
        verifier = build_verifier(
            self.cfg.trust, self.enclave.platform, self.enclave.measurement, self.owner_releases
        )
        self.directory = AttestedDirectory(
            verifier, self.session, refresh_s=self.cfg.trust.refresh_s
        )
        self.spawn(self._watch(), "attestation-watch")
        self.enrolment.session, self.enrolment.directory = self.session, self.directory
        self.spawn(self.enrolment.run(self._attestation_incidents), "gateway-enrolment")
        if self.ocfg.gateways:
            self.spawn(self.gateway_health.run(self.session), "gateway-health")
        self.spawn(self.cluster_health.run(self.session), "cluster-health")

    async def on_stop(self) -> None:
        """Close client, ops listener and database."""
        for runner in self._runners:
            await runner.cleanup()
        if self.session is not None:
            await self.session.close()
        if self.deliverer is not None:
            self.deliverer.close()
        self.store.close()

    async def _prune(self) -> None:
        inc = self.ocfg.incidents
        while True:
            before = time.time_ns() - int(inc.retention_s * 1e9)
            await asyncio.to_thread(self.store.prune, before, inc.max_flag_rows)
            await asyncio.sleep(_PRUNE_S)

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
            msg = decode_result(body)
            layout, vector, seq, shard = msg.layout, msg.shares(), msg.seq, msg.shard
            validate_submission(
                self.cfg.policy,
                layout,
                vector,
                n_parties=len(self.ocfg.parties),
                checks=self.layout_checks,
            )
        except (PeerError, AnalyticsError, ValueError, KeyError, TypeError, RecursionError) as exc:
            reason = "attestation" if isinstance(exc, PeerError) else "malformed"
            self.errors.labels("results", reason).inc()
            log.warning("refused results: %s", exc)
            return web.json_response(
                {"error": str(exc)}, status=403 if reason == "attestation" else 400
            )
        epoch = layout.epoch_ns
        doc = layout_doc(layout)
        try:
            fresh = await asyncio.to_thread(
                self.store.submit, epoch, party, seq, doc, vector, shard=shard
            )
        except sqlite3.Error as exc:  # nothing was written: the party resends it
            self.errors.labels("results", "store").inc()
            log.error(
                "results of party %d, shard %d, epoch %d not stored, the party resends them: "
                "the output's database failed (%s: %s); check its disk",
                party, shard, epoch, type(exc).__name__, exc,
            )  # fmt: skip
            return web.json_response(
                {"error": f"the output could not store the results ({type(exc).__name__})"},
                status=503,
                headers={"Retry-After": "1"},
            )
        self.releases[(party, shard)] = max(epoch, self.releases.get((party, shard), epoch))
        if fresh != "new":
            self.errors.labels("results", fresh).inc()
            return web.json_response({"status": fresh})  # 200: the party stops resending it
        self.received.labels(str(party)).inc()
        async with self._completing:
            return await self._complete(shard, epoch, party, layout)

    async def _complete(
        self, shard: int, epoch: int, party: int, layout: ReleaseLayout
    ) -> web.Response:
        try:
            done = try_complete(
                self.cfg.policy,
                len(self.ocfg.parties),
                {
                    p: (layout if p == party else as_layout(lay), vec)
                    for p, (lay, vec) in (
                        await asyncio.to_thread(self.store.pending, epoch, shard)
                    ).items()
                },
                checks=self.layout_checks,
            )
        except AnalyticsError as exc:
            self.errors.labels("results", "inconsistent").inc()
            log.warning("epoch %s not reconstructed: %s", epoch, exc)
            return web.json_response({"status": "inconsistent"}, status=202)
        if done is not None and done.withheld_classes:
            self.errors.labels("results", "fleet_unbalanced").inc(len(done.withheld_classes))
            log.warning(
                "epoch %s: fleet rows of %s not stored: their count is not the sum of the "
                "released windows (a withheld window would be recoverable)",
                epoch,
                ",".join(done.withheld_classes),
            )
        if done is not None:
            rows = done.rows
            clash = await asyncio.to_thread(
                self.store.claim_fleet, shard, done.epoch_ns, done.classes
            )
            if clash:
                self.errors.labels("results", "fleet_cross_shard").inc(len(clash))
                log.warning(
                    "epoch %s of shard %d: fleet rows of %s not stored: the class is in the "
                    "layouts of two shards (the shard map must keep a fleet class in one)",
                    epoch,
                    shard,
                    ",".join(clash),
                )
                rows = withhold_fleet(self.cfg.policy, rows, clash)
            now = time.time_ns()
            inc = self.ocfg.incidents
            through = done.epoch_ns + done.window_ns

            def tracker(live: dict[Key, Incident]) -> Tracked:
                out = track(rows, through, live, inc.rules, max_flags=inc.max_flags_per_incident)
                for i in out.incidents:
                    if live.get(i.key) is not i:
                        self.incidents_opened.labels(i.state.value).inc()
                return out

            await asyncio.to_thread(
                functools.partial(self.store.store_epoch, shard=shard),
                done.epoch_ns,
                done.window_ns,
                rows,
                now,
                tracker,
            )
            await self._changed()
            self.epochs.inc()
            self.latency.observe(max(now - done.epoch_ns - done.window_ns, 0) / 1e9)
        return web.json_response({"status": "stored" if done else "pending"})

    async def _attestation_incidents(self, suspending: dict[str, int]) -> None:
        """One attestation incident per gateway that any cluster suspends (docs/CLOUD.md)."""
        now = time.time_ns()

        def step(live: dict[str, Incident]) -> list[Incident]:
            return attestation_changes(live, suspending, now)

        written = await asyncio.to_thread(self.store.attestation_incidents, step, now)
        for row in written:
            self.incidents_opened.labels(row["state"]).inc()
            log.warning("gateway %s attestation incident %s", row["gateway"], row["state"])
        if written:
            await self._changed()

    async def _changed(self) -> None:
        """Results or incidents changed: tell the dashboards and the deliverer."""
        await self.notifier.notify()
        if self.deliverer is not None:
            self.deliverer.wake()

    def _live_incidents(self) -> list[dict[str, Any]]:
        """Open and acknowledged incidents (re-sent to Alertmanager every refresh)."""
        out: list[dict[str, Any]] = []
        for state in (State.OPEN, State.ACKNOWLEDGED):
            out += self.store.incidents(IncidentQuery(state=state, limit=1000))
        return out

    def health(self) -> dict[str, Any]:
        """Health plus attestation summary."""
        doc = super().health()
        statuses = self.directory.status.values() if self.directory else []
        doc["clusters_attested"] = sum(1 for s in statuses if s.ok)
        now = time.time_ns()
        doc["shards"] = [
            {**p, "lag_s": round(max(now - int(p["through_ns"]), 0) / 1e9, 3)}
            for p in self.store.shard_progress()
        ]
        return doc

    async def _api_health(self, _r: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def _api_clusters(self, _r: web.Request) -> web.Response:
        out = []
        status = self.directory.status if self.directory else {}
        for i, ep in sorted(self.ocfg.parties.items()):
            st = status.get(ep.service_id)
            rel = {k: e for (p, k), e in self.releases.items() if p == i}
            out.append(
                {
                    "party": i,
                    "service_id": ep.service_id,
                    "url": ep.url,
                    "attested": bool(st and st.ok),
                    "detail": st.detail if st else "not checked yet",
                    "measurement": st.measurement if st else "",
                    "checked_ns": st.checked_ns if st else None,
                    "shards": [msgspec.to_builtins(r) for r in self.cluster_health.shards(i, rel)],
                    "workers": [msgspec.to_builtins(r) for r in self.cluster_health.workers(i)],
                }
            )
        return web.json_response(out)

    async def _api_tokens(self, _r: web.Request) -> web.Response:
        return web.json_response(self.tokens.listing())

    async def _api_new_token(self, r: web.Request) -> web.Response:
        try:
            doc = await r.json()
            role = Role.parse(doc.get("role"))
            name = str(doc.get("name", ""))
        except (ValueError, AttributeError):
            role, name = None, ""
        if role is None or not 1 <= len(name) <= 64:
            return web.json_response(
                {"error": 'send {"name": 1..64 chars, "role": viewer|operator|admin}'},
                status=400,
            )
        token = await asyncio.to_thread(self.tokens.create, name, role)
        return web.json_response({"name": name, "role": role.name.lower(), "token": token})
