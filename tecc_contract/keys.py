"""HPKE suites and key handling for cluster recipients and gateway signers.

Two KEMs are offered: X25519 (default, RFC 9180 DHKEM) and the hybrid
post-quantum ML-KEM-768 + X25519 (selected by configuration). KDF is
HKDF-SHA256 and AEAD is AES-128-GCM in both suites.
"""

from __future__ import annotations

import enum
from typing import Final

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from tecc_contract.errors import ParameterError

X25519_PUBLIC_BYTES: Final = 32
MLKEM768_PUBLIC_BYTES: Final = 1184

HpkePrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
HpkePublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey


class KemSuite(enum.StrEnum):
    """The HPKE KEM a cluster's key belongs to; the wire code is its index."""

    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"

    @property
    def code(self) -> int:
        """One-byte wire code."""
        return list(KemSuite).index(self)

    @classmethod
    def from_code(cls, code: int) -> KemSuite:
        """Inverse of :attr:`code`; ParameterError for unknown codes."""
        members = list(cls)
        if not 0 <= code < len(members):
            raise ParameterError(f"unknown KEM suite code {code}")
        return members[code]

    def hpke_suite(self) -> hpke.Suite:
        """The cryptography HPKE suite object."""
        kem = hpke.KEM.X25519 if self is KemSuite.X25519 else hpke.KEM.MLKEM768_X25519
        return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


def generate_cluster_keypair(suite: KemSuite) -> tuple[HpkePrivateKey, bytes]:
    """A fresh HPKE recipient key pair; the public key as raw wire bytes."""
    private_raw, public_raw = generate_cluster_keypair_raw(suite)
    return load_private_key(suite, private_raw), public_raw


def load_public_key(suite: KemSuite, raw: bytes) -> HpkePublicKey:
    """Parse a recipient public key from raw bytes; ParameterError if malformed."""
    try:
        if suite is KemSuite.X25519:
            if len(raw) != X25519_PUBLIC_BYTES:
                raise ParameterError(f"X25519 public key must be 32 bytes, got {len(raw)}")
            return x25519.X25519PublicKey.from_public_bytes(raw)
        if len(raw) != MLKEM768_PUBLIC_BYTES + X25519_PUBLIC_BYTES:
            raise ParameterError(f"ML-KEM-768+X25519 public key must be 1216 bytes, got {len(raw)}")
        m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_BYTES])
        x = x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_BYTES:])
        return hpke.MLKEM768X25519PublicKey(m, x)
    except ValueError as exc:
        raise ParameterError(f"malformed {suite} public key: {exc}") from exc


def load_private_key(suite: KemSuite, raw: bytes) -> HpkePrivateKey:
    """Parse a recipient private key from raw bytes (32 for X25519; 64+32 hybrid seed)."""
    try:
        if suite is KemSuite.X25519:
            return x25519.X25519PrivateKey.from_private_bytes(raw)
        if len(raw) != 96:
            raise ParameterError(
                f"hybrid private key must be 96 bytes (64 seed + 32), got {len(raw)}"
            )
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64])
        x = x25519.X25519PrivateKey.from_private_bytes(raw[64:])
        return hpke.MLKEM768X25519PrivateKey(m, x)
    except ValueError as exc:
        raise ParameterError(f"malformed {suite} private key: {exc}") from exc


def generate_cluster_keypair_raw(suite: KemSuite) -> tuple[bytes, bytes]:
    """A fresh recipient key pair as (private raw bytes, public raw bytes).

    The private bytes round-trip through :func:`load_private_key`, so services
    can seal them at rest.
    """
    x = x25519.X25519PrivateKey.generate()
    if suite is KemSuite.X25519:
        return x.private_bytes_raw(), x.public_key().public_bytes_raw()
    m = mlkem.MLKEM768PrivateKey.generate()
    return (
        m.private_bytes_raw() + x.private_bytes_raw(),
        m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw(),
    )


def ed25519_public_from_bytes(raw: bytes) -> ed25519.Ed25519PublicKey:
    """Parse a raw 32-byte Ed25519 public key; ParameterError if malformed."""
    try:
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ParameterError(f"malformed Ed25519 public key: {exc}") from exc


def ed25519_public_bytes(key: ed25519.Ed25519PublicKey) -> bytes:
    """Raw 32-byte encoding of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
