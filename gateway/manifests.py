"""The owner-signed release manifest in force at this gateway (config ``trust.owner_key``).

Instead of (or besides) a list of measurements in its config, the gateway
trusts the plant owner's Ed25519 key. Before each quote is verified, the
uplink fetches ``GET {cluster}/v1/manifest`` over the same TLS connection
settings it fetches the quote with (the certificate just seen, whose key
the quote must then bind; :mod:`gateway.uplink_tls`), at most every
``trust.refresh_s`` per cluster and at once after a quote was refused.
Between attestations :meth:`ManifestTrust.follow` fetches it from every
attested cluster each ``trust.refresh_s`` too (a busy link re-attests only
every few minutes), and a newer manifest in force makes every link attest
again at its next step, so a build the owner withdrew gets nothing more.
:func:`tecc_contract.manifest.verify_manifest` decides; a manifest issued
later than the one in force replaces it (no restart), and the newest
accepted one is kept in ``state_dir/release_manifest.json`` so a restart
cannot be rolled back to an older one. A malformed, forged, foreign-signed,
expired, future-dated or older manifest is refused, counted in
``gateway_manifest_rejected_total{reason}`` and logged; the manifest in
force stays. A cluster that serves none (404/503, or the request fails)
counts as ``unavailable`` and also changes nothing.

:class:`ManifestTrust` is the :class:`~tecc_contract.attestation.ReleaseCheck`
the platform verifier consults for a measurement its fixed list lacks: the
quote's measurement, its ``policy`` claim and its role must be one entry of
the manifest in force, and that manifest must not have expired.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config import GatewayConfig
from gateway.uplink_tls import SslArg
from tecc_contract.attestation import QuoteVerifier
from tecc_contract.manifest import MAX_MANIFEST_BYTES, REASONS, ReleaseManifest
from tecc_contract.manifest_state import STATE_FILE, ManifestState
from tecc_contract.platforms import VerifierSettings, build_quote_verifier

log = logging.getLogger(__name__)
__all__ = ["STATE_FILE", "ManifestTrust", "quote_verifier"]


class ManifestFollower(Protocol):
    """A cluster link as :meth:`ManifestTrust.follow` sees it (``gateway.uplink.ClusterLink``)."""

    def manifest_source(self) -> tuple[str, SslArg] | None:
        """The attested base URL and its ``ssl=``; None while not attested."""

    def recheck(self) -> None:
        """Attest again at the next step."""


class ManifestTrust(ManifestState):
    """Fetches, verifies and keeps the newest owner-signed manifest; answers quote checks."""

    def __init__(
        self,
        owner_key: Ed25519PublicKey,
        state_dir: Path,
        registry: CollectorRegistry,
        *,
        refresh_s: float = 30.0,
        max_skew_s: float = 300.0,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._refresh_s = refresh_s
        self._fetched: dict[str, float] = {}  # cluster base URL -> monotonic time of last GET
        self.rejected = Counter(
            "gateway_manifest_rejected",
            "Release manifests refused (the one in force stays), by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.issued = Gauge(
            "gateway_manifest_issued_seconds",
            "issued time of the release manifest in force (0: none)",
            registry=registry,
        )
        super().__init__(owner_key, state_dir, max_skew_s=max_skew_s, now_ns=now_ns)

    def rejected_reason(self, reason: str) -> None:
        """Count a refused manifest."""
        self.rejected.labels(reason).inc()

    def installed(self, manifest: ReleaseManifest) -> None:
        """Export the issued time of the manifest in force."""
        self.issued.set(manifest.issued_ns / 1e9)

    async def refresh(
        self, session: aiohttp.ClientSession, base_url: str, ssl: SslArg, *, force: bool = False
    ) -> None:
        """Fetch ``{base_url}/v1/manifest`` unless fetched within ``refresh_s``; never raises
        for what the cluster answers (the manifest in force stays)."""
        now = time.monotonic()
        if not force and now - self._fetched.get(base_url, -math.inf) < self._refresh_s:
            return
        self._fetched[base_url] = now
        try:
            async with session.get(
                f"{base_url}/v1/manifest", ssl=ssl, timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                data = await resp.content.read(MAX_MANIFEST_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("cannot fetch the release manifest from %s: %s", base_url, exc)
            return
        if status != 200:
            self.rejected.labels("unavailable").inc()
            log.warning(
                "%s/v1/manifest answered %d: that cluster serves no release manifest (set its "
                "release_manifest to the file the owner signed)",
                base_url,
                status,
            )
            return
        self.offer(data, base_url)

    async def follow(
        self, session: aiohttp.ClientSession, links: Sequence[ManifestFollower]
    ) -> None:
        """Forever: every ``refresh_s``, fetch the manifest of each attested cluster, so a
        healthy link that does not re-attest still picks up a new one. A newer manifest in
        force makes every link attest again at its next step: a build it no longer lists
        gets nothing more, whatever link brought the manifest."""
        while True:
            await asyncio.sleep(self._refresh_s)
            before = self.current
            for link in links:
                source = link.manifest_source()
                if source is not None:
                    await self.refresh(session, *source)
            if self.current is not before:
                for link in links:
                    link.recheck()

    def refusal(self, measurement: bytes, claims: Mapping[str, str], role: str) -> str | None:
        """None if the manifest in force lists this build for ``role``; else why not.

        A refusal makes the next attestation fetch the manifests again at once.
        """
        why = super().refusal(measurement, claims, role)
        if why is not None:
            self._fetched.clear()
        return why


def quote_verifier(
    cfg: GatewayConfig, registry: CollectorRegistry
) -> tuple[QuoteVerifier, ManifestTrust | None]:
    """The configured platform verifier (``attestation.platform``) and, with
    ``trust.owner_key``, the release manifest it also accepts builds from."""
    att = cfg.attestation
    manifests = (
        None
        if cfg.trust is None
        else ManifestTrust(
            Ed25519PublicKey.from_public_bytes(cfg.trust.owner_key),
            cfg.state_dir,
            registry,
            refresh_s=cfg.trust.refresh_s,
            max_skew_s=cfg.trust.max_skew_s,
        )
    )
    settings = VerifierSettings(
        platform_keys={
            k: Ed25519PublicKey.from_public_bytes(v) for k, v in att.platform_keys.items()
        },
        allowed_measurements=att.allowed_measurements,
        max_age_s=att.max_age_s,
        releases=manifests,
    )
    return build_quote_verifier(att.platform, settings), manifests
