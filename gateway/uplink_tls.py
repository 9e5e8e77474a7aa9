"""TLS to a cluster, authenticated by its attestation rather than by a public CA.

The party's HTTPS listener presents a key generated inside its enclave, and
every quote it issues carries the SHA-256 of that key's SubjectPublicKeyInfo
(claim ``tls_spki``, :func:`tecc_contract.attestation.tls_spki_digest`). The
gateway fetches the quote over TLS without trusting the certificate yet,
verifies the quote, and then requires that the certificate presented *on
that very connection* has the attested key: a proxy that terminates TLS with
its own certificate and relays the real quote (fresh nonce and all) is
caught here. Uploads and progress notices then go only to a server whose
certificate is that one (:class:`aiohttp.Fingerprint`, checked at every new
connection before a byte of the request is sent).

With ``tls_ca_file`` the chain and host name of the certificate fetched at
each attestation are verified against the operator's CA as well; uploads
then pin that same attested certificate, so the attested key is always
required (a certificate merely signed by the CA is not enough). ``tls: off``
(plain HTTP) skips all of this and is refused at config load for a
non-loopback host unless ``insecure_plain_http: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from gateway.config import ClusterConfig
from gateway.errors import TlsPinError
from tecc_contract.attestation import TLS_CLAIM, VerifiedIdentity, tls_spki_digest
from tecc_contract.errors import AttestationError

#: What aiohttp's ``ssl=`` takes for one request.
SslArg = ssl.SSLContext | aiohttp.Fingerprint | bool


def probe_context(cfg: ClusterConfig) -> ssl.SSLContext:
    """The TLS settings of the first handshake: the key is checked against the quote later."""
    if cfg.tls_ca_file is not None:
        return ssl.create_default_context(cafile=str(cfg.tls_ca_file))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trusted by the attested key below, not by a CA
    return ctx


async def server_certificate(
    cfg: ClusterConfig, url: str | None = None, timeout_s: float = 5.0
) -> bytes | None:
    """The DER certificate the server at ``url`` presents now (None without TLS).

    ``url``: one of the cluster's endpoints (default: its first). One TLS
    handshake, then the connection is closed; the quote is fetched next over
    a connection required to present this same certificate.
    """
    if not cfg.tls:
        return None
    parts = urlsplit(url or cfg.url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = probe_context(cfg)
    async with asyncio.timeout(timeout_s):
        _, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return der if isinstance(der, bytes) else None


def fetch_ssl(cert_der: bytes | None) -> SslArg:
    """``ssl=`` of ``GET /attestation``: exactly the certificate just seen (or plain HTTP)."""
    if cert_der is None:
        return True
    return aiohttp.Fingerprint(hashlib.sha256(cert_der).digest())


@dataclass(frozen=True, slots=True)
class TlsPin:
    """The ``ssl=`` of one cluster's uploads, derived from its last verified quote."""

    upload: SslArg
    spki: str  # the attested digest ("" without TLS)


def pin(cfg: ClusterConfig, ident: VerifiedIdentity, cert_der: bytes | None) -> TlsPin:
    """The pin for ``cfg``'s uploads; :class:`TlsPinError` unless the key is the attested one."""
    if not cfg.tls:
        return TlsPin(True, "")
    claim = ident.claims.get(TLS_CLAIM)
    if not claim:
        raise TlsPinError(
            f"cluster {cfg.index} ({ident.service_id}) binds no TLS key in its quote (claim "
            f"{TLS_CLAIM}), so its HTTPS server cannot be authenticated: run a party build that "
            "serves attested TLS, or set tls: off for this cluster (loopback only)"
        )
    if cert_der is None:
        raise TlsPinError(f"cluster {cfg.index}: the connection carried no TLS certificate")
    try:
        seen = tls_spki_digest(cert_der)
    except AttestationError as exc:
        raise TlsPinError(f"cluster {cfg.index}: {exc}") from exc
    if not hmac.compare_digest(seen, claim):
        raise TlsPinError(
            f"cluster {cfg.index} ({ident.service_id}): the TLS server presents key "
            f"{seen[:16]}…, the cluster's quote binds {claim[:16]}…: something on the path "
            "terminates TLS (a proxy or an impostor); nothing is sent to it"
        )
    # exactly the attested certificate; with tls_ca_file the probe that fetched it has
    # already verified it against the CA and the host name
    return TlsPin(fetch_ssl(cert_der), claim)
