"""Verifying other services: build the verifier, fetch and check quotes over HTTP.

:class:`AttestedDirectory` asks a service for a quote over a fresh random
nonce (``GET /attestation?nonce=<hex>``), checks it with the configured
:class:`~tecc_contract.attestation.QuoteVerifier`, and caches the verified
identity for ``refresh_s``. Callers then trust exactly the keys the quote
binds. Failures are remembered, so status pages can show why a service is
refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from cloud_tecc.config import SELF, Endpoint, Trust
from cloud_tecc.enclave.platform import SimulatedPlatform, platform_key_id
from cloud_tecc.errors import CloudConfigError, PeerError
from tecc_contract.attestation import Quote, QuoteVerifier, ReleaseCheck, VerifiedIdentity
from tecc_contract.errors import AttestationError, ParameterError
from tecc_contract.keys import ed25519_public_from_bytes
from tecc_contract.platforms import VerifierSettings, build_quote_verifier


def build_verifier(
    trust: Trust,
    platform: SimulatedPlatform,
    own_measurement: bytes,
    releases: ReleaseCheck | None = None,
) -> QuoteVerifier:
    """The ``attestation.platform`` verifier from configured anchors (``self`` expanded).

    A quote passes if its measurement is on the fixed list
    (``Trust.fixed_measurements``) or ``releases`` (the owner-signed manifest,
    :mod:`cloud_tecc.enclave.releases`) allows its build.
    """
    keys = {}
    domains: dict[str, set[str]] = {}
    own = platform.attestation_key.public_key()
    try:
        for k in trust.anchors:
            pub = own if k == SELF else ed25519_public_from_bytes(bytes.fromhex(k))
            keys[platform_key_id(pub)] = pub
        for service_id, k in trust.domains.items():
            pub = own if k == SELF else ed25519_public_from_bytes(bytes.fromhex(k))
            keys[platform_key_id(pub)] = pub
            domains.setdefault(platform_key_id(pub), set()).add(service_id)
        allowed = {
            own_measurement if m == SELF else bytes.fromhex(m) for m in trust.fixed_measurements
        }
    except ValueError as exc:
        raise CloudConfigError(
            f"attestation.platform_keys: anchors must be hex Ed25519 keys or 'self': {exc}"
        ) from exc
    settings = VerifierSettings(
        platform_keys=keys,
        allowed_measurements=allowed,
        max_age_s=trust.max_age_s,
        platform_services=domains,
        releases=releases,
    )
    try:
        return build_quote_verifier(trust.platform, settings)
    except ParameterError as exc:
        raise CloudConfigError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Last attestation result of one service."""

    service_id: str
    url: str
    ok: bool
    detail: str
    checked_ns: int
    measurement: str


class AttestedDirectory:
    """Fetches, verifies and caches the identities of the services one talks to."""

    def __init__(
        self,
        verifier: QuoteVerifier,
        session: aiohttp.ClientSession,
        *,
        refresh_s: float = 30.0,
        clock_ns: Callable[[], int] = time.time_ns,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._verifier = verifier
        self._session = session
        self._refresh_ns = int(refresh_s * 1e9)
        self._clock = clock_ns
        self._random = random_bytes
        self._cache: dict[str, VerifiedIdentity] = {}
        self.status: dict[str, PeerStatus] = {}

    async def identity(self, ep: Endpoint, role: str, *, force: bool = False) -> VerifiedIdentity:
        """The verified identity of ``ep``; :class:`PeerError` if it does not attest."""
        now = self._clock()
        hit = self._cache.get(ep.service_id)
        if hit is not None and not force and now - hit.verified_ns < self._refresh_ns:
            return hit
        # A service served by several workers (ep.urls) is asked at each in turn: every
        # worker of it presents the same attested keys, so any one's quote will do.
        urls = ep.base_urls
        for n, url in enumerate(urls):
            try:
                ident = await self._fetch(url, ep, role, 5.0 if len(urls) == 1 else 2.0)
            except (AttestationError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                if n + 1 < len(urls) and not isinstance(exc, AttestationError):
                    continue  # unreachable: the next worker
                self._cache.pop(ep.service_id, None)
                self.status[ep.service_id] = PeerStatus(
                    ep.service_id, url, False, str(exc), now, ""
                )
                raise PeerError(f"{ep.service_id} refused: {exc}") from exc
            self._cache[ep.service_id] = ident
            self.status[ep.service_id] = PeerStatus(
                ep.service_id, url, True, "attested", now, ident.measurement.hex()
            )
            return ident
        raise PeerError(f"{ep.service_id}: no url to fetch its quote from")

    async def _fetch(self, url: str, ep: Endpoint, role: str, timeout_s: float) -> VerifiedIdentity:
        nonce = self._random(32)
        async with self._session.get(
            f"{url}/attestation",
            params={"nonce": nonce.hex()},
            timeout=aiohttp.ClientTimeout(total=timeout_s),  # shorter with more workers to ask
            # The quote is nonce-fresh and platform-signed; trust comes from it, not from
            # the (enclave-issued) certificate of a party's HTTPS listener.
            ssl=False,
        ) as resp:
            if resp.status != 200:
                raise AttestationError(f"GET /attestation answered HTTP {resp.status}")
            quote = Quote.from_bytes(await resp.read())
        return self._verifier.verify(
            quote, nonce=nonce, now_ns=self._clock(), role=role, service_id=ep.service_id
        )

    def forget(self, service_id: str) -> None:
        """Drop a cached identity (e.g. after a signature failure)."""
        self._cache.pop(service_id, None)


async def reattest(
    directory: AttestedDirectory, ep: Endpoint, role: str, sign_key: bytes
) -> VerifiedIdentity:
    """A fresh quote from ``ep``; :class:`PeerError` if it fails or its signing key changed.

    Sessions call this every ``attestation.reattest_s``, so a peer whose build,
    policy or platform stopped attesting is dropped mid-session, not only at
    the next start.
    """
    ident = await directory.identity(ep, role, force=True)
    if ident.keys.get("sign") != sign_key:
        raise PeerError(f"{ep.service_id} re-attested with another signing key; session ended")
    return ident
