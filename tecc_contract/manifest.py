"""Release manifests: the plant owner's signed list of cluster builds a gateway may trust.

A manifest names, per entry, an enclave *measurement* (SHA-256 of code bundle
plus analytics policy, :mod:`cloud_tecc.enclave.measurement`), the digest of
that analytics policy (quote claim ``policy``, :func:`policy_digest`) and
the service kinds it applies to, and is valid from ``issued_ns`` to
``not_after_ns``. The owner's Ed25519 key signs
``b"tecc-release-manifest-v1\\n"`` followed by the canonical JSON of the body
(keys sorted, no whitespace, ASCII, entries in the signed order), so any
reformatting of the served JSON keeps the signature valid and any change of
a value breaks it.

Gateways hold the owner's *public* key instead of a list of measurements;
each cluster serves the manifest it runs under at ``GET /v1/manifest``. A
changed policy is then one newly signed manifest, with no gateway edit.

:func:`verify_manifest` is pure: bytes, owner key, clock and the newest
``issued_ns`` accepted before in; a :class:`ReleaseManifest` or a
:class:`ManifestError` whose ``reason`` is a metric label out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tecc_contract.attestation import MEASUREMENT_BYTES, ROLES
from tecc_contract.errors import AttestationError

MANIFEST_VERSION: Final = 1
MAX_MANIFEST_BYTES: Final = 64 * 1024
MAX_ENTRIES: Final = 256
MAX_NOTE: Final = 200
#: Quote claim: hex of :func:`policy_digest` of the analytics policy the service runs.
POLICY_CLAIM: Final = "policy"
_DOMAIN: Final = b"tecc-release-manifest-v1\n"
_POLICY_DOMAIN: Final = b"tecc-policy-v1\n"
_FIELDS: Final = frozenset(
    {"version", "owner_key_id", "issued_ns", "not_after_ns", "entries", "signature"}
)
_ENTRY_FIELDS: Final = frozenset({"measurement", "policy_digest", "services", "note"})
#: ``ManifestError.reason`` values (labels of ``gateway_manifest_rejected_total``).
REASONS: Final = (
    "malformed",
    "signer",
    "signature",
    "expired",
    "not_yet_valid",
    "downgrade",
    "unavailable",
)


class ManifestError(AttestationError):
    """A release manifest was refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def policy_digest(policy_bytes: bytes) -> bytes:
    """The 32-byte digest of an analytics policy's canonical bytes (claim ``policy``)."""
    return hashlib.sha256(_POLICY_DOMAIN + policy_bytes).digest()


def owner_key_id(public_key: Ed25519PublicKey) -> str:
    """The id a manifest names its signer by: ``owner-`` + 16 hex digits of the key's hash."""
    return "owner-" + hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def load_owner_public(text: str) -> Ed25519PublicKey:
    """An owner public key from PEM, base64 of the raw 32 bytes, or 64 hex digits.

    ValueError (saying which forms are accepted) otherwise.
    """
    s = text.strip()
    if s.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(s.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM public key is not an Ed25519 key")
        return key
    raw = b""
    if len(s) == 64:
        try:
            raw = bytes.fromhex(s)
        except ValueError:
            raw = b""
    if not raw:
        try:
            raw = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != 32:
        raise ValueError(
            "an owner key is a PEM public key, the base64 of its 32 raw bytes or 64 hex digits "
            "(`tecc-cluster admin owner-key init` writes owner.pub)"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class ReleaseEntry:
    """One allowed build: measurement, policy digest, the service kinds it may run as."""

    measurement: bytes
    policy_digest: bytes
    services: frozenset[str]
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.measurement) != MEASUREMENT_BYTES or len(self.policy_digest) != 32:
            raise ManifestError("malformed", "entry measurement and policy_digest are 32 bytes")
        if not self.services or not self.services <= ROLES:
            raise ManifestError(
                "malformed", f"entry services must be a non-empty subset of {sorted(ROLES)}"
            )
        if len(self.note) > MAX_NOTE:
            raise ManifestError("malformed", f"entry note is longer than {MAX_NOTE} characters")

    def to_json(self) -> dict[str, Any]:
        """The entry's canonical JSON form."""
        return {
            "measurement": self.measurement.hex(),
            "policy_digest": self.policy_digest.hex(),
            "services": sorted(self.services),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class ReleaseManifest:
    """The owner-signed list of builds clusters may run (see the module docstring)."""

    owner_key_id: str
    issued_ns: int
    not_after_ns: int
    entries: tuple[ReleaseEntry, ...]
    signature: bytes = b""
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if self.version != MANIFEST_VERSION:
            raise ManifestError("malformed", f"manifest version {self.version} is not 1")
        if not self.owner_key_id:
            raise ManifestError("malformed", "manifest names no owner_key_id")
        if not 0 < self.issued_ns < self.not_after_ns:
            raise ManifestError("malformed", "manifest needs 0 < issued_ns < not_after_ns")
        if not 0 < len(self.entries) <= MAX_ENTRIES:
            raise ManifestError("malformed", f"manifest needs 1..{MAX_ENTRIES} entries")

    def body(self) -> dict[str, Any]:
        """Every signed field, JSON-ready."""
        return {
            "version": self.version,
            "owner_key_id": self.owner_key_id,
            "issued_ns": self.issued_ns,
            "not_after_ns": self.not_after_ns,
            "entries": [e.to_json() for e in self.entries],
        }

    def signed_bytes(self) -> bytes:
        """The canonical bytes the owner key signs (domain tag + sorted compact ASCII JSON)."""
        canon = json.dumps(self.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return _DOMAIN + canon.encode()

    def to_bytes(self) -> bytes:
        """The file / ``GET /v1/manifest`` form: the body plus the base64 signature."""
        doc = {**self.body(), "signature": base64.b64encode(self.signature).decode()}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    def allows(self, measurement: bytes, policy: bytes, role: str) -> bool:
        """Whether an entry names this measurement and policy digest for service kind ``role``."""
        return any(
            e.measurement == measurement and e.policy_digest == policy and role in e.services
            for e in self.entries
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReleaseManifest:
        """Parse (not verify) a manifest; ManifestError ``malformed`` on any defect."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("malformed", f"manifest of {len(data)} bytes is too large")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError("malformed", "manifest is not valid JSON") from exc
        return cls.from_json(doc)

    @classmethod
    def from_json(cls, doc: object) -> ReleaseManifest:
        """Parse a manifest from untrusted JSON (exact fields, exact types)."""
        obj = _object(doc, _FIELDS, "manifest")
        entries = obj["entries"]
        if not isinstance(entries, list):
            raise ManifestError("malformed", "manifest entries must be a list")
        return cls(
            owner_key_id=_str(obj["owner_key_id"], "owner_key_id"),
            issued_ns=_int(obj["issued_ns"], "issued_ns"),
            not_after_ns=_int(obj["not_after_ns"], "not_after_ns"),
            entries=tuple(_entry(e) for e in entries[: MAX_ENTRIES + 1]),
            signature=_b64(obj["signature"]),
            version=_int(obj["version"], "version"),
        )


def _object(doc: object, fields: frozenset[str], what: str) -> Mapping[str, object]:
    if not isinstance(doc, dict):
        raise ManifestError("malformed", f"{what} must be a JSON object")
    if set(doc) != fields:
        missing, extra = sorted(fields - set(doc)), sorted(set(doc) - fields)
        raise ManifestError(
            "malformed", f"{what} fields differ from {sorted(fields)}: missing {missing}, "
            f"unknown {extra}"
        )  # fmt: skip
    return doc


def _int(v: object, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ManifestError("malformed", f"manifest field {name} must be an integer")
    return v


def _str(v: object, name: str) -> str:
    if not isinstance(v, str):
        raise ManifestError("malformed", f"manifest field {name} must be a string")
    return v


def _hex32(v: object, name: str) -> bytes:
    s = _str(v, name)
    if len(s) != 64 or s != s.lower():
        raise ManifestError("malformed", f"entry {name} must be 64 lowercase hex digits")
    try:
        return bytes.fromhex(s)
    except ValueError as exc:
        raise ManifestError("malformed", f"entry {name} must be 64 lowercase hex digits") from exc


def _b64(v: object) -> bytes:
    try:
        return base64.b64decode(_str(v, "signature"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError("malformed", "manifest signature is not base64") from exc


def _entry(doc: object) -> ReleaseEntry:
    obj = _object(doc, _ENTRY_FIELDS, "manifest entry")
    services = obj["services"]
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise ManifestError("malformed", "entry services must be a list of strings")
    if len(set(services)) != len(services) or services != sorted(services):
        raise ManifestError("malformed", "entry services must be sorted and distinct")
    return ReleaseEntry(
        measurement=_hex32(obj["measurement"], "measurement"),
        policy_digest=_hex32(obj["policy_digest"], "policy_digest"),
        services=frozenset(services),
        note=_str(obj["note"], "note"),
    )


def sign_manifest(unsigned: ReleaseManifest, owner_key: Ed25519PrivateKey) -> ReleaseManifest:
    """``unsigned`` with the owner's signature (its ``owner_key_id`` must name that key)."""
    if unsigned.owner_key_id != owner_key_id(owner_key.public_key()):
        raise ManifestError("signer", "owner_key_id does not name the signing key")
    return replace(unsigned, signature=owner_key.sign(unsigned.signed_bytes()))


def check_signed(manifest: ReleaseManifest, owner_key: Ed25519PublicKey) -> None:
    """ManifestError (``signer`` or ``signature``) unless ``owner_key`` signed ``manifest``."""
    want = owner_key_id(owner_key)
    if manifest.owner_key_id != want:
        raise ManifestError(
            "signer", f"manifest is signed by {manifest.owner_key_id!r}, the owner key is {want!r}"
        )
    try:
        owner_key.verify(manifest.signature, manifest.signed_bytes())
    except InvalidSignature as exc:
        raise ManifestError("signature", "manifest signature does not verify") from exc


def verify_manifest(
    data: bytes,
    owner_key: Ed25519PublicKey,
    *,
    now_ns: int,
    current: ReleaseManifest | None = None,
    max_skew_ns: int = 300 * 10**9,
) -> ReleaseManifest:
    """Parse and check a manifest; ManifestError with the reason of the first defect.

    Refused: malformed bytes, another signer, a bad signature, an expired
    manifest (``now_ns > not_after_ns``), one issued more than ``max_skew_ns``
    in the future (``not_yet_valid``), and one issued before
    ``current`` — the newest manifest this verifier accepted, even if it has
    expired since (``downgrade``: an attacker replaying an older, validly
    signed manifest that still lists a withdrawn build). The same
    ``issued_ns`` passes only with identical content (the same manifest
    fetched again).
    """
    manifest = ReleaseManifest.from_bytes(data)
    check_signed(manifest, owner_key)
    if now_ns > manifest.not_after_ns:
        raise ManifestError(
            "expired", f"manifest expired {(now_ns - manifest.not_after_ns) / 1e9:.0f} s ago"
        )
    if manifest.issued_ns > now_ns + max_skew_ns:
        raise ManifestError(
            "not_yet_valid",
            f"manifest is issued {(manifest.issued_ns - now_ns) / 1e9:.0f} s in the future",
        )
    if current is not None and (
        manifest.issued_ns < current.issued_ns
        or (manifest.issued_ns == current.issued_ns and manifest.body() != current.body())
    ):
        raise ManifestError(
            "downgrade",
            f"manifest issued at {manifest.issued_ns} is not newer than the accepted one "
            f"({current.issued_ns}): a replayed or rolled-back manifest",
        )
    return manifest
