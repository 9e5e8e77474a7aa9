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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import Counter

from cloud_tecc.config import PartyConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.tls import listener_tls
from cloud_tecc.enclave.trust import AttestedDirectory, build_verifier
from cloud_tecc.errors import CloudConfigError, IngestError
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.enrolment import Enrolment
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.ingest import REASONS, SIGNATURE_REFUSED, Ingestor, public_error
from cloud_tecc.party.registry import REFRESH_S, LiveKeys, Registry
from cloud_tecc.party.store import BatchRow, InsertResult, ShareStore
from cloud_tecc.party.writer import GroupWriter
from cloud_tecc.service.base import ServiceBase
from tecc_contract.ack import Outcome
from tecc_contract.crashpoint import crash_point
from tecc_contract.errors import ContractError, FrameError, SignatureError
from tecc_contract.keys import ed25519_public_from_bytes
from tecc_contract.progress import check_fresh, open_progress

log = logging.getLogger("cloud_tecc.party")
_STATUS = {
    "malformed": 400,
    "version": 400,
    "layout": 400,
    "signature": 403,
    "decrypt": 403,
    "replay": 409,
    "expired": 409,
    "pending": 403,
    "suspended": 403,
    "revoked": 403,
}


def _key_bytes(text: str) -> bytes:
    if len(text) == 64:
        return bytes.fromhex(text)
    return base64.b64decode(text, validate=True)


def late_readings(row: BatchRow, watermark_ns: int) -> int:
    """Readings of ``row`` timestamped before ``watermark_ns`` (their epoch is computed)."""
    return sum(
        int(np.count_nonzero(np.frombuffer(seg.ts, dtype="<i8") < watermark_ns))
        for seg in row.segments
    )


def gateway_keys(cfg: PartyConfig) -> dict[str, Ed25519PublicKey]:
    """The enrolled gateways' Ed25519 keys (hex or base64 in the config)."""
    keys = {}
    for gw, raw in cfg.gateways.items():
        try:
            keys[gw] = ed25519_public_from_bytes(_key_bytes(raw.strip()))
        except (ValueError, binascii.Error, ContractError) as exc:
            raise CloudConfigError(
                f"gateway {gw!r}: enrolled key must be a raw 32-byte Ed25519 key in hex or base64"
            ) from exc
    return keys


class PartyService(ServiceBase):
    """One cluster party."""

    def __init__(self, cfg: PartyConfig, enclave: Enclave) -> None:
        super().__init__(cfg.service, enclave)
        self.pcfg = cfg
        if cfg.tls:  # HTTPS with the enclave's key; quotes carry its SPKI digest
            self.ssl_context, spki = listener_tls(
                enclave.keys.tls_der, cfg.service.service_id, [cfg.service.host], cfg.tls_files
            )
            self.enclave = replace(enclave, tls_spki=spki)
            log.info("ingest listener serves TLS, attested SPKI SHA-256 %s", spki)
        self.store = ShareStore(cfg.service.state_dir / "shares.db", cfg.synchronous)
        self.writer = GroupWriter(self.store)
        #: The live allow-list: config keys plus the gateways enrolled here (enrolment.db).
        self.gateways = Registry(cfg.service.state_dir)
        self._gateway_keys = LiveKeys(gateway_keys(cfg), self.gateways)
        self.ingestor = self._make_ingestor(time.time_ns())
        #: Verification and decryption run here, off the event loop that drives the MPC.
        self._ingest_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ingest")
        self.tracker = ProgressTracker(
            self._gateway_keys, started_ns=time.time_ns(), active_ns=int(cfg.active_s * 1e9)
        )
        if enclave.keys.suite is not cfg.suite:
            raise CloudConfigError(
                f"sealed keys use {enclave.keys.suite}, config asks {cfg.suite}; re-provision"
            )
        reg = self.registry
        self.batches = Counter(
            "tecc_ingest_batches", "Envelopes by outcome", ["outcome"], registry=reg
        )
        self.readings = Counter("tecc_ingest_readings", "Readings accepted", registry=reg)
        self.rejected = Counter(
            "tecc_ingest_rejected", "Envelopes refused, by reason", ["reason"], registry=reg
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.late = Counter(
            "tecc_ingest_late_readings",
            "Readings older than the computed watermark (never analysed)",
            registry=reg,
        )
        self.notices = Counter(
            "tecc_progress_notices", "Gateway progress notices accepted", registry=reg
        )
        self.notices_rejected = Counter(
            "tecc_progress_rejected",
            "Progress notices refused, by reason",
            ["reason"],
            registry=reg,
        )
        for reason in ("malformed", "signature", "misaddressed", "stale", *REASONS[-3:]):
            self.notices_rejected.labels(reason)
        self.rotations = Counter("tecc_hpke_rotations", "Cluster HPKE key rotations", registry=reg)
        self.coordinator: Coordinator | None = None
        self.http: aiohttp.ClientSession | None = None
        self.app.router.add_post("/v1/batches", self._ingest)
        self.app.router.add_post("/v1/progress", self._progress)
        self.enrolment = Enrolment(
            cfg.enrolment,
            cfg.service.state_dir,
            self.gateways,
            self.registry,
            static=gateway_keys(cfg),
        )
        self.enrolment.routes(self.app, time.time_ns)

    def _make_ingestor(self, now_ns: int) -> Ingestor:
        """An ingestor for the current HPKE key (and the previous one during its overlap)."""
        keys, cfg = self.enclave.keys, self.pcfg
        overlap = keys.rotated_ns and now_ns < keys.rotated_ns + int(cfg.hpke_overlap_s * 1e9)
        return Ingestor(
            party=cfg.party,
            n_parties=cfg.n_parties,
            suite=cfg.suite,
            private_key=keys.hpke,
            gateway_keys=self._gateway_keys,
            retention_s=cfg.retention_s,
            previous_key=keys.previous_hpke if overlap else None,
            service_id=cfg.service.service_id,
            sign_key=keys.sign,
            admit=self._gateway_keys.admit,
        )

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
        """Start the writer and the coordinator."""
        self.http = aiohttp.ClientSession()
        verifier = build_verifier(self.cfg.trust, self.enclave.platform, self.enclave.measurement)
        directory = AttestedDirectory(verifier, self.http, refresh_s=self.cfg.trust.refresh_s)
        self.coordinator = Coordinator(
            cfg=self.pcfg,
            enclave=self.enclave,
            store=self.store,
            directory=directory,
            http=self.http,
            registry=self.registry,
            tracker=self.tracker,
            refusing=self._gateway_keys.refused,
        )
        self.spawn(self.writer.run(), "group-writer")
        self.spawn(self.coordinator.run(), "coordinator")
        self.spawn(self.coordinator.deliver(), "result-delivery")
        if self.pcfg.hpke_rotation_s > 0:
            self.spawn(self._rotate_keys(), "hpke-rotation")
        self.spawn(self._watch_gateways(), "gateway-registry")

    async def _watch_gateways(self) -> None:
        """Pick up operator changes to enrolment.db; suspend gateways that stopped quoting."""
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                self.gateways.refresh()
                self.enrolment.sweep(time.time_ns())
            except sqlite3.Error as exc:  # e.g. locked by a long operator transaction
                log.warning("enrolment.db not readable now (%s); retrying", exc)

    async def on_stop(self) -> None:
        """Close the HTTP client and the database."""
        if self.http is not None:
            await self.http.close()
        self._ingest_pool.shutdown(wait=True)
        self.store.close()
        self.gateways.close()

    def health(self) -> dict[str, Any]:
        """Health with ingest and session state."""
        doc = super().health()
        doc["party"] = self.pcfg.party
        doc["n_parties"] = self.pcfg.n_parties
        doc["shard"], doc["shards"] = self.pcfg.shard, self.pcfg.shards
        doc["watermark_ns"] = self.store.watermark()
        doc["batches"] = self.store.batch_count()
        doc["session"] = self.coordinator.state if self.coordinator else "starting"
        doc["gateways"] = self.tracker.snapshot(time.time_ns())
        doc["enrolment"] = {r.gateway_id: r.state for r in self.gateways.records()}
        if self.coordinator is not None:
            doc["peers"] = {
                k: {"attested": v.ok, "detail": v.detail, "checked_ns": v.checked_ns}
                for k, v in self.coordinator.directory.status.items()
            }
        return doc

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
            self.rejected.labels(exc.reason).inc()
            log.warning("envelope refused (%s): %s", exc.reason, exc)
            return web.json_response(
                {"status": "rejected", "reason": exc.reason, "error": public_error(exc)},
                status=_STATUS.get(exc.reason, 400),
            )
        self.batches.labels(outcome).inc()
        # admitted: track a gateway enrolled while running from its first batch on
        self.tracker.add(row.gateway, row.received_ns)
        self.tracker.heard(row.gateway, row.received_ns)
        if outcome == InsertResult.ACCEPTED:
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
        signed = self.ingestor.acknowledge(
            row, Outcome.STORED if outcome == InsertResult.ACCEPTED else Outcome.DUPLICATE
        )
        return web.json_response(
            {
                "status": outcome,
                "gateway": row.gateway,
                "seq": row.seq,
                "ack": base64.b64encode(signed).decode(),
            }
        )

    async def _prepare(self, frame: bytes) -> BatchRow:
        """:meth:`Ingestor.prepare` in the ingest pool (signature check, HPKE open, parse)."""
        loop = asyncio.get_running_loop()
        prepare = functools.partial(self.ingestor.prepare, frame, received_ns=time.time_ns())
        return await loop.run_in_executor(self._ingest_pool, prepare)

    async def _progress(self, request: web.Request) -> web.Response:
        body = await request.content.read(4096)  # a notice is < 600 bytes
        now = time.time_ns()
        try:
            notice = open_progress(body, self._gateway_keys)
        except SignatureError as exc:
            log.warning("progress notice refused (signature): %s", exc)
            return self._refuse_notice("signature", 403, SIGNATURE_REFUSED)
        except FrameError as exc:
            return self._refuse_notice("malformed", 400, str(exc))
        try:
            self._gateway_keys.admit(notice.gateway_id)
        except IngestError as exc:
            return self._refuse_notice(exc.reason, 403, str(exc))
        if notice.cluster_id != self.cfg.service_id:
            return self._refuse_notice(
                "misaddressed",
                403,
                f"notice for cluster {notice.cluster_id!r}, this is {self.cfg.service_id!r}",
            )
        try:
            check_fresh(notice, now)
        except FrameError as exc:
            return self._refuse_notice("stale", 409, str(exc))
        self.tracker.add(notice.gateway_id, now)
        self.tracker.note(notice.gateway_id, notice.through_ns, now)
        self.notices.inc()
        return web.json_response({"status": "noted"})

    def _refuse_notice(self, reason: str, status: int, error: str) -> web.Response:
        self.notices_rejected.labels(reason).inc()
        log.warning("progress notice refused (%s): %s", reason, error)
        return web.json_response(
            {"status": "rejected", "reason": reason, "error": error}, status=status
        )
