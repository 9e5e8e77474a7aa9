"""The cluster party process: envelope ingest over HTTPS plus the epoch coordinator.

The listener serves TLS by default with a key generated in the enclave; every
quote names that key's SPKI digest (claim ``tls_spki``), which the gateways
pin after verifying the quote (``tls: off`` in the config: plain HTTP, on
loopback only unless ``insecure_plain_http: true``).

``POST /v1/batches`` takes one envelope frame (``application/octet-stream``).
Answers: 200 ``{"status": "accepted"}`` once the share is durable, 200
``{"status": "duplicate"}`` for a retry of a stored batch, both with ``"ack"``:
the base64 of the signed acknowledgement of that exact frame
(:mod:`tecc_contract.ack`; the gateway deletes a frame only on it), 409 for a replay
(used sequence number, different frame), 400/403 for malformed, forged or
misaddressed frames. Every refusal is counted in
``tecc_ingest_rejected_total{reason}``; nothing about the payload is logged.

``POST /v1/progress`` takes a gateway's signed progress notice
(:mod:`tecc_contract.progress`): 200 once noted; 400 malformed, 403 forged,
unenrolled or addressed to another cluster, 409 stale or future-dated
(counted in ``tecc_progress_rejected_total{reason}``). The notices decide
when an epoch is closed (:class:`~cloud_tecc.party.epochs.ProgressTracker`).

``POST /v1/admin/gateways`` answers the attested output service's sealed
request for this party's gateway records and applies an approve or revoke
only with a MAC by one of this party's operator keys
(:mod:`cloud_tecc.party.admin_api`).

With ``jetstream:`` in the config the process is a shard worker: no
``/v1/batches`` or ``/v1/progress`` here (the ingest frontends take them,
:mod:`cloud_tecc.party.frontend`); its shard's parts and the progress notices
come from the party's log (:mod:`cloud_tecc.party.logfeed`), and every worker
of the shard contends for its lease: only the holder runs the log consumer, the
coordinator and the result delivery (:mod:`cloud_tecc.party.takeover`); the
others are standbys serving ``/healthz`` (``"role": "standby"``) and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import Counter

from cloud_tecc.config import PartyConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory, build_verifier
from cloud_tecc.errors import IngestError
from cloud_tecc.jetstream.enrolkv import KvRegistry
from cloud_tecc.jetstream.server import NatsDeployment
from cloud_tecc.jetstream.shardmaps import MapFollower
from cloud_tecc.party.admin_api import AdminApi
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.logfeed import LogFeed, start_embedded
from cloud_tecc.party.registry import REFRESH_S, RegistryUnavailableError
from cloud_tecc.party.store import BatchRow, InsertResult, ShareStore
from cloud_tecc.party.takeover import ActiveShard
from cloud_tecc.party.uplink import MAX_NOTICE, UplinkService, gateway_keys
from cloud_tecc.party.workerhealth import WorkerMetrics, epochs_behind
from cloud_tecc.party.writer import GroupWriter
from cloud_tecc.service.health import GatewayProgress, PartyHealth, PeerHealth, to_json
from tecc_contract.crashpoint import crash_point

__all__ = ["PartyService", "gateway_keys", "late_readings"]
log = logging.getLogger("cloud_tecc.party")


def late_readings(row: BatchRow, watermark_ns: int) -> int:
    """Readings of ``row`` timestamped before ``watermark_ns`` (their epoch is computed)."""
    return sum(
        int(np.count_nonzero(np.frombuffer(seg.ts, dtype="<i8") < watermark_ns))
        for seg in row.segments
    )


class PartyService(UplinkService):
    """One cluster party (or, with ``jetstream:``, one shard worker of it)."""

    def __init__(self, cfg: PartyConfig, enclave: Enclave) -> None:
        super().__init__(cfg, enclave)
        self.store = ShareStore(cfg.service.state_dir / "shares.db", cfg.synchronous)
        self.writer = GroupWriter(self.store)
        self.tracker = ProgressTracker(
            self._gateway_keys, started_ns=time.time_ns(), active_ns=int(cfg.active_s * 1e9)
        )
        reg = self.registry
        self.late = Counter(
            "tecc_ingest_late_readings",
            "Readings older than the computed watermark (never analysed)",
            registry=reg,
        )
        self.rotations = Counter("tecc_hpke_rotations", "Cluster HPKE key rotations", registry=reg)
        self.coordinator: Coordinator | None = None
        self.http: aiohttp.ClientSession | None = None
        self.nats: NatsDeployment | None = None
        self.feed: LogFeed | None = None
        self.active: ActiveShard | None = None
        self.directory: AttestedDirectory | None = None
        AdminApi(
            cfg,
            lambda: self.enclave,
            self.gateways,
            lambda: self.directory,
            reg,
            operators=self.kv_operators,
        ).attach(self.app)
        self.shard_map: MapFollower | None = None
        if cfg.jetstream is None:
            self.app.router.add_post("/v1/batches", self._ingest)
            self.app.router.add_post("/v1/progress", self._progress)
        else:
            self.feed = LogFeed(
                cfg=cfg.jetstream,
                state_dir=cfg.service.state_dir,
                shard=cfg.shard,
                service_id=cfg.service.service_id,
                store=self.store,
                writer=self.writer,
                tracker=self.tracker,
                keys=self._gateway_keys,
                stored=self.stored,
                registry=self.registry,
            )
            self.active = ActiveShard(
                cfg=cfg, store=self.store, feed=self.feed, registry=self.registry
            )
            self.shard_map = MapFollower.of_party(
                cfg, cfg.jetstream, self.registry, f"worker-map-{cfg.worker_id}"
            )
        self._worker_metrics()

    async def _rotate_keys(self) -> None:
        """Rotate the HPKE key every ``hpke_rotation_s``; drop the previous after the overlap."""
        rotate_ns, overlap_ns = (
            int(x * 1e9) for x in (self.pcfg.hpke_rotation_s, self.pcfg.hpke_overlap_s)
        )
        while True:
            now = time.time_ns()
            last = self.enclave.keys.rotated_ns or self.started_ns
            due = last + rotate_ns
            if self.enclave.keys.rotated_ns and now < self.enclave.keys.rotated_ns + overlap_ns:
                due = min(due, self.enclave.keys.rotated_ns + overlap_ns)
            await asyncio.sleep(max(due - now, 0) / 1e9 + 0.01)
            now = time.time_ns()
            if now >= last + rotate_ns:
                self.enclave = await asyncio.to_thread(self.enclave.rotate, self.cfg.state_dir, now)
                self.rotations.inc()
                log.info(
                    "HPKE key rotated; the previous key opens envelopes for %.0f s",
                    self.pcfg.hpke_overlap_s,
                )
            self.ingestor = self._make_ingestor(now)

    async def on_start(self) -> None:
        """Start the writer, the coordinator and (JetStream mode) the log feed."""
        js = self.pcfg.jetstream
        if js is not None and js.embedded:
            self.nats = await asyncio.to_thread(start_embedded, js, self.cfg.state_dir)
        self.http = aiohttp.ClientSession()
        verifier = build_verifier(
            self.cfg.trust, self.enclave.platform, self.enclave.measurement, self.owner_releases
        )
        directory = AttestedDirectory(verifier, self.http, refresh_s=self.cfg.trust.refresh_s)
        self.directory = directory
        self.coordinator = Coordinator(
            cfg=self.pcfg,
            enclave=self.enclave,
            store=self.store,
            directory=directory,
            http=self.http,
            registry=self.registry,
            tracker=self.tracker,
            refusing=self._gateway_keys.refused,
            fence=self.active,
            map_id=None if self.shard_map is None else self.shard_map.map_id,
        )
        self.spawn(self.writer.run(), "group-writer")
        if self.shard_map is not None:
            self.spawn(self.shard_map.run(), "shard-map")
        if self.active is not None:  # the lease decides when the active part runs
            self.active.coordinator = self.coordinator
            self.spawn(self.run_enrolment_kv(), "enrolment-kv")
            self.spawn(self._when_gateways_loaded(self.active), "shard-lease")
        else:
            self.spawn(self.coordinator.run(), "coordinator")
            self.spawn(self.coordinator.deliver(), "result-delivery")
        if self.pcfg.hpke_rotation_s > 0 and js is None:  # else: the frontends' ring
            self.spawn(self._rotate_keys(), "hpke-rotation")
        self.spawn(self._watch_gateways(), "gateway-registry")

    async def _when_gateways_loaded(self, active: ActiveShard) -> None:
        """Contend for the shard only once the party's enrolment records are loaded."""
        if isinstance(self.gateways, KvRegistry):
            await self.gateways.wait_ready()
        await active.run()

    async def _watch_gateways(self) -> None:
        """Pick up operator changes to enrolment.db; suspend gateways that stopped quoting."""
        while True:
            await asyncio.sleep(REFRESH_S)
            if not self.gateways.ready:
                continue
            try:
                self.gateways.refresh()
                await self.enrolment.sweep(time.time_ns())
            except sqlite3.Error as exc:  # e.g. locked by a long operator transaction
                log.warning("enrolment.db not readable now (%s); retrying", exc)
            except RegistryUnavailableError as exc:  # the party's KV is away
                log.warning("enrolment registry not writable now (%s); retrying", exc)

    async def on_stop(self) -> None:
        """Close the HTTP client and the database."""
        if self.http is not None:
            await self.http.close()
        if self.feed is not None:
            await self.feed.close()
        if self.shard_map is not None:
            await self.shard_map.close()
        await super().on_stop()
        self.store.close()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)

    def health(self) -> dict[str, Any]:
        """Health with ingest and session state (:class:`PartyHealth`)."""
        return to_json(self.health_doc(time.time_ns()))

    def health_doc(self, now_ns: int) -> PartyHealth:
        """The typed health document (:mod:`cloud_tecc.service.health`)."""
        base = super().health()
        role, session = base["role"], self.coordinator.state if self.coordinator else "starting"
        lease = log_doc = None
        if self.active is not None:
            role, lease = self.active.role, self.active.health(now_ns)
            if self.active.role != "owner":
                session = self.active.role
        if self.feed is not None:
            log_doc = self.feed.health(now_ns)
        peers = None
        if self.coordinator is not None:
            peers = {
                k: PeerHealth(attested=v.ok, detail=v.detail, checked_ns=v.checked_ns)
                for k, v in self.coordinator.directory.status.items()
            }
        peer_wm = self._peer_watermarks()
        return PartyHealth(
            status=base["status"],
            role=role,
            service_id=base["service_id"],
            release_manifest=(
                None if self.owner_releases is None else self.owner_releases.health()
            ),
            party=self.pcfg.party,
            n_parties=self.pcfg.n_parties,
            shard=self.pcfg.shard,
            shards=self.pcfg.shards,
            worker_id=self.pcfg.worker_id if self.active is not None else None,
            watermark_ns=self.store.watermark(),
            batches=self.store.batch_count(),
            readings_waiting=self._readings_waiting(),
            session=session,
            peers_watermark_ns=max(peer_wm.values()) if peer_wm else None,
            epochs_behind_peers=self._behind(),
            lease=lease,
            log=log_doc,
            gateways={
                g: GatewayProgress(
                    through_s=float(v["through_s"]),
                    silent_s=float(v["silent_s"]),
                    live=bool(v["live"]),
                )
                for g, v in self.tracker.snapshot(now_ns).items()
            },
            enrolment={r.gateway_id: r.state for r in self.gateways.records()},
            enrolment_sync_age_s=self._enrolment_age(),
            peers=peers,
            shard_map=None if self.shard_map is None else self.shard_map.health(),
            dealer=None if self.coordinator is None else self.coordinator.dealer.health(),
        )

    def _peer_watermarks(self) -> dict[int, int]:
        """The peers' watermarks of the last round, while this process runs the shard."""
        if self.coordinator is None or (self.active is not None and self.active.role != "owner"):
            return {}
        return self.coordinator.round.peer_watermarks

    def _readings_waiting(self) -> int | None:
        """Readings stored that no committed epoch covers (None on a standby)."""
        if self.active is not None and self.active.role != "owner":
            return None
        return self.store.readings_from(self.store.watermark())

    def _behind(self) -> int | None:
        own = self.coordinator.watermark_ns if self.coordinator else self.store.watermark()
        return epochs_behind(own, self._peer_watermarks(), self.pcfg.service.policy.window_ns)

    def _worker_metrics(self) -> None:
        active, feed = self.active, self.feed
        WorkerMetrics(
            self.registry,
            shard=self.pcfg.shard,
            worker=self.pcfg.worker_id,
            role=(lambda: active.role) if active is not None else None,
            pending=lambda: None if feed is None or feed.log is None else feed.pending,
            lag_s=lambda: None if feed is None else feed.lag_s(time.time_ns()),
            watermark_ns=lambda: (
                self.coordinator.watermark_ns if self.coordinator else self.store.watermark()
            ),
            behind=self._behind,
            waiting=self._readings_waiting,
            owner_lease_age_s=lambda: (
                None if active is None else active.owner_lease_age_s(time.time_ns())
            ),
        )

    async def _ingest(self, request: web.Request) -> web.Response:
        frame = await request.read()
        try:
            row = await self._prepare(frame)
            outcome = await self.writer.submit(row)
            crash_point("party.after_persist")  # test hook, inert in production
            if outcome == InsertResult.REPLAY:
                raise IngestError(
                    "replay",
                    f"batch {row.seq} of {row.gateway!r} was already stored with different content",
                )
        except IngestError as exc:
            return self.refuse_batch(exc)
        self.stored(row, outcome)
        return self.ack_response(row, outcome, stored=outcome == InsertResult.ACCEPTED)

    def stored(self, row: BatchRow, outcome: str) -> None:
        """Bookkeeping of a batch (or shard part) now in the store: liveness, late readings."""
        # admitted: track a gateway enrolled while running from its first batch on
        self.tracker.add(row.gateway, row.received_ns)
        self.tracker.heard(row.gateway, row.received_ns)
        if outcome != InsertResult.ACCEPTED:
            return
        self.readings.inc(row.count)
        wm = self.coordinator.watermark_ns if self.coordinator else self.store.watermark()
        if row.min_ts < wm:
            late = late_readings(row, wm)
            self.late.inc(late)
            log.warning(
                "batch %d of %r: %d readings older than the computed watermark (late, "
                "not analysed)",
                row.seq,
                row.gateway,
                late,
            )

    async def _progress(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_NOTICE)
        now = time.time_ns()
        notice = self.check_notice(body, now)
        if isinstance(notice, web.Response):
            return notice
        self.tracker.add(notice.gateway_id, now)
        self.tracker.note(notice.gateway_id, notice.through_ns, now)
        self.notices.inc()
        return web.json_response({"status": "noted"})
