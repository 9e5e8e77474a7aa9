"""Attestation evidence: the (simulated) TEE quote format and its verifier.

A quote binds an enclave's *measurement* (SHA-256 of its code bundle and
analytics policy), its public keys and a verifier-chosen nonce, signed by a
platform attestation key (Ed25519). Gateways, peer clusters and the output
service call a :class:`QuoteVerifier` before they trust a service's keys.

Only the simulation lives here: :class:`SimulatedPlatformVerifier` trusts a
configured set of platform keys. A real SGX/TDX/SEV-SNP verifier implements
the same :class:`QuoteVerifier` protocol (check the hardware vendor's chain,
then the same allow-list of measurements), and nothing else changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tecc_contract.errors import AttestationError

QUOTE_VERSION: Final = 1
MEASUREMENT_BYTES: Final = 32
MAX_QUOTE_JSON_BYTES: Final = 64 * 1024
ROLES: Final = frozenset({"party", "dealer", "output"})


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: object, name: str) -> bytes:
    if not isinstance(s, str):
        raise AttestationError(f"quote field {name} must be a base64 string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttestationError(f"quote field {name} is not valid base64") from exc


@dataclass(frozen=True, slots=True)
class Quote:
    """Evidence that a service runs a given measured build with given keys."""

    role: str
    service_id: str
    measurement: bytes
    keys: Mapping[str, bytes]
    nonce: bytes
    issued_ns: int
    platform_key_id: str
    hpke_suite: str = "x25519"
    signature: bytes = b""
    version: int = QUOTE_VERSION
    claims: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version != QUOTE_VERSION:
            raise AttestationError(f"quote version {self.version} is not supported (need 1)")
        if self.role not in ROLES:
            raise AttestationError(f"quote role {self.role!r} is not one of {sorted(ROLES)}")
        if len(self.measurement) != MEASUREMENT_BYTES:
            raise AttestationError(f"measurement must be {MEASUREMENT_BYTES} bytes")
        if not self.service_id or not self.platform_key_id:
            raise AttestationError("quote needs a service id and a platform key id")

    def _body(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "role": self.role,
            "service_id": self.service_id,
            "measurement": self.measurement.hex(),
            "keys": {k: _b64(v) for k, v in sorted(self.keys.items())},
            "hpke_suite": self.hpke_suite,
            "nonce": _b64(self.nonce),
            "issued_ns": self.issued_ns,
            "platform_key_id": self.platform_key_id,
            "claims": dict(sorted(self.claims.items())),
        }

    def signed_bytes(self) -> bytes:
        """Canonical bytes the platform key signs (sorted-key compact JSON)."""
        return json.dumps(self._body(), sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, as served by ``GET /attestation``."""
        return {**self._body(), "signature": _b64(self.signature)}

    @classmethod
    def from_json(cls, obj: object) -> Quote:
        """Parse a quote from untrusted JSON; AttestationError if malformed."""
        if not isinstance(obj, dict):
            raise AttestationError("quote must be a JSON object")
        try:
            keys = obj["keys"]
            claims = obj.get("claims", {})
            if not isinstance(keys, dict) or not isinstance(claims, dict):
                raise AttestationError("quote keys and claims must be objects")
            measurement = bytes.fromhex(str(obj["measurement"]))
            fields = (obj["role"], obj["service_id"], obj["platform_key_id"], obj["hpke_suite"])
            if not all(isinstance(f, str) for f in fields):
                raise AttestationError("quote role, ids and suite must be strings")
            version, issued = obj["version"], obj["issued_ns"]
            if not isinstance(version, int) or not isinstance(issued, int):
                raise AttestationError("quote version and issued_ns must be integers")
            return cls(
                role=str(obj["role"]),
                service_id=str(obj["service_id"]),
                measurement=measurement,
                keys={str(k): _unb64(v, f"keys.{k}") for k, v in keys.items()},
                nonce=_unb64(obj["nonce"], "nonce"),
                issued_ns=issued,
                platform_key_id=str(obj["platform_key_id"]),
                hpke_suite=str(obj["hpke_suite"]),
                signature=_unb64(obj["signature"], "signature"),
                version=version,
                claims={str(k): str(v) for k, v in claims.items()},
            )
        except KeyError as exc:
            raise AttestationError(f"quote is missing the field {exc.args[0]!r}") from exc
        except ValueError as exc:
            raise AttestationError(f"quote field is malformed: {exc}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        """Parse a quote from JSON bytes of bounded size."""
        if len(data) > MAX_QUOTE_JSON_BYTES:
            raise AttestationError(f"quote of {len(data)} bytes is larger than allowed")
        try:
            return cls.from_json(json.loads(data))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AttestationError("quote is not valid JSON") from exc


#: Quote claim: hex SHA-256 of the DER SubjectPublicKeyInfo of the TLS certificate the
#: service's HTTPS listener presents (the key generated in its enclave, or the operator's).
TLS_CLAIM: Final = "tls_spki"


def tls_spki_digest(cert_der: bytes) -> str:
    """The hex SHA-256 of a DER certificate's SubjectPublicKeyInfo (claim ``tls_spki``).

    The key, not the certificate, is pinned: a service may re-issue its
    certificate for the same enclave key. AttestationError if ``cert_der`` is
    not a certificate.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise AttestationError("the TLS peer certificate is not a valid DER certificate") from exc
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def hpke_key_digest(public_raw: bytes) -> str:
    """The hex SHA-256 a rotated quote names its previous HPKE key by (claim ``hpke_prev``)."""
    return hashlib.sha256(b"tecc-hpke-key/" + public_raw).hexdigest()


def rotated_from(ident: VerifiedIdentity, old_public_raw: bytes) -> bool:
    """Whether an attested identity's HPKE key directly replaces ``old_public_raw``."""
    return ident.claims.get("hpke_prev") == hpke_key_digest(old_public_raw)


def sign_quote(unsigned: Quote, platform_key: Ed25519PrivateKey) -> Quote:
    """Return ``unsigned`` with the platform key's signature over its canonical bytes."""
    return replace(unsigned, signature=platform_key.sign(unsigned.signed_bytes()))


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """What a verifier vouches for after checking a quote."""

    role: str
    service_id: str
    measurement: bytes
    keys: Mapping[str, bytes]
    hpke_suite: str
    verified_ns: int
    platform_key_id: str
    claims: Mapping[str, str] = field(default_factory=dict)


class QuoteVerifier(Protocol):
    """Checks a quote and returns the identity it proves, or raises AttestationError."""

    def verify(
        self,
        quote: Quote,
        *,
        nonce: bytes,
        now_ns: int,
        role: str | None = None,
        service_id: str | None = None,
    ) -> VerifiedIdentity:
        """Verify ``quote`` was issued for ``nonce`` by a trusted platform and allowed build.

        ``role`` and ``service_id``, when given, must be what the quote names.
        """
        ...


class ReleaseCheck(Protocol):
    """A live source of allowed builds besides the fixed list (an owner-signed manifest)."""

    def refusal(self, measurement: bytes, claims: Mapping[str, str], role: str) -> str | None:
        """None if the build is allowed now, else why not (for the refusal message)."""
        ...


class SimulatedPlatformVerifier:
    """Verifier for the simulated TEE: trusted platform keys plus a measurement allow-list.

    A quote's measurement passes if it is in ``allowed_measurements`` or
    ``releases`` allows it (the union of both).
    """

    def __init__(
        self,
        *,
        platform_keys: Mapping[str, Ed25519PublicKey],
        allowed_measurements: Collection[bytes],
        max_age_s: float = 300.0,
        platform_services: Mapping[str, Collection[str]] | None = None,
        releases: ReleaseCheck | None = None,
    ) -> None:
        self._platforms = dict(platform_keys)
        self._allowed = frozenset(allowed_measurements)
        self._releases = releases
        self._max_age_ns = int(max_age_s * 1e9)
        #: Trust domains: platform key id -> the service ids that platform may vouch
        #: for. A key id missing here vouches for any service (a legacy anchor).
        self._domains = {k: frozenset(v) for k, v in (platform_services or {}).items()}

    def _check_release(self, quote: Quote) -> None:
        """AttestationError unless the release manifest allows a measurement not listed."""
        refusal = (
            None
            if self._releases is None
            else self._releases.refusal(quote.measurement, quote.claims, quote.role)
        )
        if self._releases is None or refusal is not None:
            more = "" if refusal is None else f" and the release manifest refuses it ({refusal})"
            raise AttestationError(
                f"measurement {quote.measurement.hex()[:16]}… of {quote.service_id!r} is not on "
                f"the allow-list{more}: its code or analytics policy differs from the approved "
                "build"
            )

    def verify(
        self,
        quote: Quote,
        *,
        nonce: bytes,
        now_ns: int,
        role: str | None = None,
        service_id: str | None = None,
    ) -> VerifiedIdentity:
        """Check platform signature and trust domain, nonce, freshness, role, service id
        and allow-listed measurement."""
        key = self._platforms.get(quote.platform_key_id)
        if key is None:
            raise AttestationError(f"quote signed by unknown platform {quote.platform_key_id!r}")
        try:
            key.verify(quote.signature, quote.signed_bytes())
        except InvalidSignature as exc:
            raise AttestationError(
                f"quote of {quote.service_id!r} has an invalid platform signature"
            ) from exc
        domain = self._domains.get(quote.platform_key_id)
        if domain is not None and quote.service_id not in domain:
            raise AttestationError(
                f"platform {quote.platform_key_id!r} is the root of {sorted(domain)}, not of "
                f"{quote.service_id!r}: a quote may only come from its own service's platform"
            )
        if service_id is not None and quote.service_id != service_id:
            raise AttestationError(f"quote names {quote.service_id!r}, expected {service_id!r}")
        if quote.nonce != nonce:
            raise AttestationError(f"quote of {quote.service_id!r} answers another nonce (replay?)")
        age = now_ns - quote.issued_ns
        if age > self._max_age_ns or age < -self._max_age_ns:
            raise AttestationError(f"quote of {quote.service_id!r} is stale ({age / 1e9:.0f} s)")
        if role is not None and quote.role != role:
            raise AttestationError(f"{quote.service_id!r} attests as {quote.role}, need {role}")
        if quote.measurement not in self._allowed:
            self._check_release(quote)
        return VerifiedIdentity(
            role=quote.role,
            service_id=quote.service_id,
            measurement=quote.measurement,
            keys=dict(quote.keys),
            hpke_suite=quote.hpke_suite,
            verified_ns=now_ns,
            platform_key_id=quote.platform_key_id,
            claims=dict(quote.claims),
        )


class ClusterRegistry:
    """The identities a gateway accepted for its N clusters, kept pairwise distinct.

    Each cluster must attest under its own service id with keys no other
    cluster presents: otherwise one operator could stand for two clusters and
    gather every share.
    A cluster re-attesting (for instance after a key rotation) replaces its
    own entry.
    """

    def __init__(self) -> None:
        self._by_index: dict[int, VerifiedIdentity] = {}

    def claim(self, index: int, ident: VerifiedIdentity) -> None:
        """Record cluster ``index``'s identity; AttestationError if another cluster shares it."""
        mine = {("key", bytes(v)) for v in ident.keys.values()}
        for other_index, other in self._by_index.items():
            if other_index == index:
                continue
            if other.service_id == ident.service_id:
                raise AttestationError(
                    f"clusters {other_index} and {index} both attest as {ident.service_id!r}: "
                    "every cluster needs its own service id"
                )
            if mine & {("key", bytes(v)) for v in other.keys.values()}:
                raise AttestationError(
                    f"clusters {other_index} and {index} present the same key: refused"
                )
        self._by_index[index] = ident
