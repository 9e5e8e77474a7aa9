"""What every service on a party's gateway uplink shares: TLS, keys, ingest, progress checks.

:class:`UplinkService` is the base of the all-in-one party
(:class:`~cloud_tecc.party.server.PartyService`) and of the stateless ingest
frontend (:class:`~cloud_tecc.party.frontend.IngestFrontend`): HTTPS with the
enclave's TLS key (its SPKI digest in every quote), the live allow-list of
gateways (config keys plus the enrolment registry: enrolment.db, or with
``jetstream:`` the party's KV, shared by all its frontends and workers), the
:class:`Ingestor` of the current HPKE key, the gateway enrolment endpoints, the ingest and progress
counters, and the checks of a progress notice and the answers to the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import Counter

from cloud_tecc.config import PartyConfig
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.tls import listener_tls
from cloud_tecc.errors import CloudConfigError, IngestError
from cloud_tecc.jetstream.client import party_connect
from cloud_tecc.jetstream.enrolkv import KvRegistry, import_sqlite
from cloud_tecc.jetstream.enrolnonces import KvChallenges, open_nonce_bucket
from cloud_tecc.jetstream.kv import TRANSIENT, KVError
from cloud_tecc.jetstream.operatorkv import KvOperators
from cloud_tecc.jetstream.sharelog import Overloaded
from cloud_tecc.party.enrolment import Enrolment
from cloud_tecc.party.ingest import REASONS, SIGNATURE_REFUSED, Ingestor, public_error
from cloud_tecc.party.registry import (
    GatewayRegistry,
    LiveKeys,
    Registry,
    RegistryUnavailableError,
)
from cloud_tecc.party.store import BatchRow
from cloud_tecc.service.base import ServiceBase
from tecc_contract.ack import Outcome
from tecc_contract.errors import ContractError, FrameError, SignatureError
from tecc_contract.keys import ed25519_public_from_bytes
from tecc_contract.progress import Progress, check_fresh, open_progress

log = logging.getLogger("cloud_tecc.party")
STATUS: Final = {
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
    "overloaded": 503,
}
#: A progress notice is < 600 bytes.
MAX_NOTICE: Final = 4096


def _key_bytes(text: str) -> bytes:
    if len(text) == 64:
        return bytes.fromhex(text)
    return base64.b64decode(text, validate=True)


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


class UplinkService(ServiceBase):
    """A party service that takes the gateways' envelopes and progress notices."""

    def __init__(self, cfg: PartyConfig, enclave: Enclave) -> None:
        super().__init__(cfg.service, enclave)
        self.pcfg = cfg
        if cfg.tls:  # HTTPS with the enclave's key; quotes carry its SPKI digest
            self.ssl_context, spki = listener_tls(
                enclave.keys.tls_der, cfg.service.service_id, [cfg.service.host], cfg.tls_files
            )
            self.enclave = replace(enclave, tls_spki=spki)
            log.info("ingest listener serves TLS, attested SPKI SHA-256 %s", spki)
        if enclave.keys.suite is not cfg.suite:
            raise CloudConfigError(
                f"sealed keys use {enclave.keys.suite}, config asks {cfg.suite}; re-provision"
            )
        #: The live allow-list: config keys plus the gateways enrolled at this party
        #: (enrolment.db; with jetstream: the party's KV, see run_enrolment_kv).
        self.gateways: GatewayRegistry
        self.kv_challenges: KvChallenges | None = None
        #: With jetstream: the operator keys and action nonces of the whole party.
        self.kv_operators: KvOperators | None = None
        self._enrolment_nc: Any = None
        if cfg.jetstream is None:
            self.gateways = Registry(cfg.service.state_dir)
        else:
            self.gateways = KvRegistry(self.registry)
            self.kv_challenges = KvChallenges(
                ttl_s=cfg.enrolment.nonce_ttl_s, random=os.urandom, metrics=self.registry
            )
            self.kv_operators = KvOperators(self.registry)
        self._gateway_keys = LiveKeys(gateway_keys(cfg), self.gateways)
        self.ingestor = self._make_ingestor(time.time_ns())
        #: Verification and decryption run here, off the event loop.
        self._ingest_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ingest")
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
        self.enrolment = Enrolment(
            cfg.enrolment,
            cfg.service.state_dir,
            self.gateways,
            self.registry,
            static=gateway_keys(cfg),
            challenges=self.kv_challenges,
            started_ns=time.time_ns(),
        )
        self.enrolment.routes(self.app, time.time_ns)

    def _enrolment_age(self) -> float | None:
        """Seconds since the enrolment KV copy was confirmed (None: SQLite or not loaded)."""
        if isinstance(self.gateways, KvRegistry) and self.gateways.ready:
            return round(self.gateways.age_s(), 3)
        return None

    async def run_enrolment_kv(self) -> None:
        """With ``jetstream:``: open the enrolment buckets, import enrolment.db once, watch."""
        js_cfg, registry, nonces = self.pcfg.jetstream, self.gateways, self.kv_challenges
        if js_cfg is None or not isinstance(registry, KvRegistry) or nonces is None:
            return
        while True:
            nc = None
            try:
                nc = await party_connect(
                    js_cfg, self.cfg.state_dir, f"enrolment-{self.cfg.service_id}"
                )
                js = nc.jetstream(timeout=5.0)
                await registry.open(js, replicas=js_cfg.replicas)
                nonces.bucket = await open_nonce_bucket(
                    js, replicas=js_cfg.replicas, max_pending=self.pcfg.enrolment.max_pending
                )
                await import_sqlite(registry, self.cfg.state_dir)
                if self.kv_operators is not None:
                    await self.kv_operators.open(js, replicas=js_cfg.replicas)
                    await self.kv_operators.import_file(self.cfg.state_dir)
                break
            except (*TRANSIENT, Overloaded, KVError, RegistryUnavailableError) as exc:
                log.warning("enrolment registry: party JetStream not ready (%r); retrying", exc)
                if nc is not None:
                    await nc.close()
                await asyncio.sleep(0.5)
        self._enrolment_nc = nc
        await registry.run()

    def _make_ingestor(self, now_ns: int) -> Ingestor:
        """An ingestor for the current HPKE key (and the previous one during its overlap)."""
        keys, cfg = self.enclave.keys, self.pcfg
        retire_ns = keys.rotated_ns + int(cfg.hpke_overlap_s * 1e9)
        overlap = keys.rotated_ns and now_ns < retire_ns
        note = ""
        if keys.rotated_ns and not overlap:
            when = datetime.fromtimestamp(retire_ns / 1e9, UTC).isoformat(timespec="seconds")
            note = (
                f"; the key before this party's last rotation was retired at {when} "
                "(hpke_overlap_s after the rotation): a frame sealed to it no longer opens"
            )
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
            retired_note=note,
        )

    async def _prepare(self, frame: bytes) -> BatchRow:
        """:meth:`Ingestor.prepare` in the ingest pool (signature check, HPKE open, parse)."""
        loop = asyncio.get_running_loop()
        prepare = functools.partial(self.ingestor.prepare, frame, received_ns=time.time_ns())
        return await loop.run_in_executor(self._ingest_pool, prepare)

    def refuse_batch(self, exc: IngestError) -> web.Response:
        """Count and answer a refused envelope."""
        self.rejected.labels(exc.reason).inc()
        log.warning("envelope refused (%s): %s", exc.reason, exc)
        status = STATUS.get(exc.reason, 400)
        return web.json_response(
            {"status": "rejected", "reason": exc.reason, "error": public_error(exc)},
            status=status,
            headers={"Retry-After": "2"} if status == 503 else None,
        )

    def ack_response(self, row: BatchRow, outcome: str, stored: bool) -> web.Response:
        """The 200 answer carrying the signed acknowledgement of ``row``'s exact frame."""
        self.batches.labels(outcome).inc()
        signed = self.ingestor.acknowledge(row, Outcome.STORED if stored else Outcome.DUPLICATE)
        return web.json_response(
            {
                "status": outcome,
                "gateway": row.gateway,
                "seq": row.seq,
                "ack": base64.b64encode(signed).decode(),
            }
        )

    def check_notice(self, body: bytes, now_ns: int) -> Progress | web.Response:
        """The verified, admitted, fresh notice of ``body``, or the refusal to answer."""
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
            return self._refuse_notice(exc.reason, STATUS.get(exc.reason, 403), str(exc))
        if notice.cluster_id != self.cfg.service_id:
            return self._refuse_notice(
                "misaddressed",
                403,
                f"notice for cluster {notice.cluster_id!r}, this is {self.cfg.service_id!r}",
            )
        try:
            check_fresh(notice, now_ns)
        except FrameError as exc:
            return self._refuse_notice("stale", 409, str(exc))
        return notice

    def _refuse_notice(self, reason: str, status: int, error: str) -> web.Response:
        self.notices_rejected.labels(reason).inc()
        log.warning("progress notice refused (%s): %s", reason, error)
        return web.json_response(
            {"status": "rejected", "reason": reason, "error": error},
            status=status,
            headers={"Retry-After": "2"} if status == 503 else None,
        )

    async def on_stop(self) -> None:
        """Finish the ingest pool, close the enrolment registry."""
        self._ingest_pool.shutdown(wait=True)
        self.gateways.close()
        if self._enrolment_nc is not None:
            with contextlib.suppress(*TRANSIENT):
                await self._enrolment_nc.close()
