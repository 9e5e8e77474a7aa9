"""The dealer process: the MPC engine's dealer service behind an attested identity.

At start the dealer verifies every party's quote (all N) (retrying until they
attest) and admits exactly their attested Ed25519 keys to its WebSocket
(``/dealer`` on ``mpc_listen``); parties in turn verify the dealer's quote
before they accept its key in the handshake. Every
``attestation.reattest_s`` the dealer asks each party for a fresh quote: a
party that no longer attests (or attests with other keys) is cut off until it
does again. The batch plan is traced from a dry run of the analytics program
under the (measured) policy (:mod:`cloud_tecc.dealer.plan`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import Counter, Gauge

from cloud_tecc.config import DealerConfig, parse_hostport
from cloud_tecc.dealer.plan import plan_for
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory, build_verifier
from cloud_tecc.errors import PeerError
from cloud_tecc.mpc.dealer_server import DealerService
from cloud_tecc.mpc.handshake import LinkSuite, shard_session
from cloud_tecc.service.base import ServiceBase
from tecc_contract.keys import ed25519_public_from_bytes

log = logging.getLogger("cloud_tecc.dealer")


class DealerProcess(ServiceBase):
    """Attestation front plus the engine's :class:`DealerService`."""

    def __init__(self, cfg: DealerConfig, enclave: Enclave) -> None:
        super().__init__(cfg.service, enclave)
        self.dcfg = cfg
        self.dealer: DealerService | None = None
        self.http: aiohttp.ClientSession | None = None
        self.state = "attesting parties"
        #: Party service id -> whether its attested key is admitted to the dealer link.
        self.admitted: dict[str, bool] = {ep.service_id: False for ep in cfg.parties.values()}
        self.batches = Gauge("tecc_dealer_batches", "Batches generated", registry=self.registry)
        self.reattested = Counter(
            "tecc_dealer_reattested",
            "Periodic party re-attestations passed",
            registry=self.registry,
        )
        self.upgrades_refused = Gauge(
            "tecc_dealer_upgrades_refused",
            "WebSocket upgrades refused (too many unauthenticated handshakes pending)",
            registry=self.registry,
        )
        self.handshakes_failed = Gauge(
            "tecc_dealer_handshakes_failed",
            "Dealer-link handshakes that failed (unknown key, timeout, oversized frame)",
            registry=self.registry,
        )
        self.requests_refused = Gauge(
            "tecc_dealer_requests_refused",
            "Dealer requests that were not NEXT (each closed that party's link)",
            registry=self.registry,
        )
        self.reattest_failures = Counter(
            "tecc_dealer_reattest_failures",
            "Periodic party re-attestations failed (the party's link was closed)",
            registry=self.registry,
        )

    async def on_start(self) -> None:
        """Attest the parties, then start serving."""
        self.http = aiohttp.ClientSession()
        self.spawn(self._start_dealer(), "dealer")

    async def _start_dealer(self) -> None:
        assert self.http is not None
        verifier = build_verifier(
            self.cfg.trust, self.enclave.platform, self.enclave.measurement, self.owner_releases
        )
        directory = AttestedDirectory(verifier, self.http, refresh_s=self.cfg.trust.refresh_s)
        keys: dict[int, Ed25519PublicKey] = {}
        while len(keys) < len(self.dcfg.parties):
            for i, ep in self.dcfg.parties.items():
                if i in keys:
                    continue
                try:
                    ident = await directory.identity(ep, "party")
                    keys[i] = ed25519_public_from_bytes(ident.keys["sign"])
                    self.admitted[ep.service_id] = True
                except PeerError as exc:
                    self.state = f"waiting for attested parties: {exc}"
                    log.warning("party %s not admitted: %s", ep.service_id, exc)
            if len(keys) < len(self.dcfg.parties):
                await asyncio.sleep(1.0)
        plan = await asyncio.to_thread(plan_for, self.cfg.policy, self.dcfg.batch_readings)
        log.info("dealer plan traced for %d readings: %s", self.dcfg.batch_readings, plan)
        self.dealer = DealerService(
            n=len(keys),
            plan=plan,
            key=self.enclave.keys.sign,
            party_keys=keys,
            depth=self.dcfg.depth,
            suite=LinkSuite.from_label(self.dcfg.suite.value),
            session=shard_session(self.dcfg.shard, self.dcfg.shards),
        )
        host, port = parse_hostport(self.dcfg.mpc_listen)
        await self.dealer.start(host, port)
        self.state = "serving"
        log.info("dealer serving %d attested parties on %s:%d", len(keys), host, port)
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self.cfg.trust.reattest_s
        while True:
            self.batches.set(self.dealer.stats.batches)
            self.upgrades_refused.set(self.dealer.gate.refused)
            self.handshakes_failed.set(self.dealer.gate.failed)
            self.requests_refused.set(self.dealer.stats.refused_requests)
            if loop.time() >= next_check:
                await self._reattest(directory, self.dealer)
                next_check = loop.time() + self.cfg.trust.reattest_s
            await asyncio.sleep(min(1.0, self.cfg.trust.reattest_s))

    async def _reattest(self, directory: AttestedDirectory, dealer: DealerService) -> None:
        """Fresh quotes from every party; one that fails (or changed keys) is cut off."""
        for i, ep in self.dcfg.parties.items():
            try:
                ident = await directory.identity(ep, "party", force=True)
            except PeerError as exc:
                self.reattest_failures.inc()
                log.warning("party %s failed re-attestation, link closed: %s", ep.service_id, exc)
                dealer.revoke(i)
                self.admitted[ep.service_id] = False
                continue
            self.admitted[ep.service_id] = True
            self.reattested.inc()
            dealer.admit(i, ed25519_public_from_bytes(ident.keys["sign"]))

    async def on_stop(self) -> None:
        """Stop the dealer and the client."""
        if self.dealer is not None:
            await self.dealer.close()
        if self.http is not None:
            await self.http.close()

    def health(self) -> dict[str, Any]:
        """Health with the dealer's state."""
        doc = super().health()
        doc["dealer"] = self.state
        doc["parties"] = dict(self.admitted)
        doc["shard"], doc["shards"] = self.dcfg.shard, self.dcfg.shards
        return doc
