"""A party's HPKE key ring as one sealed record: current key, previous key, version.

In the JetStream layout every ingest frontend of a party opens the gateways'
envelopes, so they must all hold the same keys, and a rotation must reach
all of them. The ring is kept in the party's KV (:mod:`cloud_tecc.jetstream.hpkekv`)
as one :class:`RingWire`: its outer fields (version, since when the current
key is current, the SHA-256 of both public keys as quotes name them) are
readable by an operator, and ``sealed`` is the whole ring, private keys
included, AES-256-GCM under the party's sealing key (the key its
``sealed_keys.bin`` is sealed under, :mod:`cloud_tecc.enclave.sealing`) with
associated data naming the role and service id. The KV therefore never holds
a plaintext key, and a value not written by an enclave of this party's
measurement and platform does not open (:class:`RingError` ``unseal``). The
outer fields must equal the sealed ones (``mismatch``), so a value edited by
hand is refused, not half-used.

This module is pure (no I/O): encode, decode, rotate.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from cloud_tecc.enclave.identity import Enclave, ServiceKeys
from cloud_tecc.enclave.sealing import seal, sealing_key, unseal
from cloud_tecc.errors import CloudError, SealError
from tecc_contract.attestation import hpke_key_digest
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw

#: Reasons a stored ring is refused (metric label ``reason``).
REASONS: Final = ("malformed", "unseal", "mismatch", "suite", "stale")
Hex64 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class RingError(CloudError):
    """A stored HPKE ring is refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RingWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The KV value of the ring (version 1 of the record format)."""

    v: Literal[1]
    version: Annotated[int, Meta(ge=1)]
    since_ns: Annotated[int, Meta(ge=0)]
    current: Hex64  # hpke_key_digest of the current public key
    previous: Annotated[str, Meta(pattern="^([0-9a-f]{64})?$")]  # of the previous ("" = none)
    sealed: str  # base64 of seal(ring secret)


class _Secret(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    version: int
    suite: str
    since_ns: int
    current_private: str
    current_public: str
    previous_private: str
    previous_public: str


@dataclass(frozen=True)
class HpkeRing:
    """The party's HPKE keys: the current one, and the one it replaced (still opening)."""

    version: int
    suite: KemSuite
    current_private: bytes
    current_public: bytes
    #: When the current key became current (ns since the epoch).
    since_ns: int
    previous_private: bytes = b""
    previous_public: bytes = b""

    @classmethod
    def of_keys(cls, keys: ServiceKeys, now_ns: int) -> HpkeRing:
        """Version 1 from a process's sealed service keys (the party's provisioned key)."""
        return cls(
            1,
            keys.suite,
            keys.hpke_private_raw,
            keys.hpke_public_raw,
            keys.rotated_ns or now_ns,
            keys.previous_private_raw,
            keys.previous_public_raw,
        )

    def rotated(self, now_ns: int) -> HpkeRing:
        """The next version: a fresh key from the OS CSPRNG; the current one becomes previous."""
        private_raw, public_raw = generate_cluster_keypair_raw(self.suite)
        return HpkeRing(
            self.version + 1,
            self.suite,
            private_raw,
            public_raw,
            now_ns,
            self.current_private,
            self.current_public,
        )

    def applied_to(self, keys: ServiceKeys) -> ServiceKeys:
        """``keys`` (signing and TLS keys kept) with this ring's HPKE keys."""
        return replace(
            keys,
            hpke_private_raw=self.current_private,
            hpke_public_raw=self.current_public,
            previous_private_raw=self.previous_private,
            previous_public_raw=self.previous_public,
            rotated_ns=self.since_ns if self.previous_public else 0,
        )

    @property
    def digest(self) -> str:
        """The current public key's digest (what ``hpke_prev`` names after the next rotation)."""
        return hpke_key_digest(self.current_public)


@dataclass(frozen=True)
class RingSealer:
    """Seals and opens rings under one enclave's sealing key (one party's frontends share it)."""

    key: bytes
    aad: bytes
    suite: KemSuite

    @classmethod
    def of(cls, enclave: Enclave) -> RingSealer:
        """The sealer of ``enclave``'s party: its platform, measurement, role and service id."""
        key = sealing_key(enclave.platform.sealing_secret, enclave.measurement)
        aad = f"tecc-hpke-ring/{enclave.role}/{enclave.service_id}".encode()
        return cls(key, aad, enclave.keys.suite)

    def encode(self, ring: HpkeRing, random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
        """The KV value of ``ring``."""
        secret = _Secret(
            version=ring.version,
            suite=ring.suite.value,
            since_ns=ring.since_ns,
            current_private=ring.current_private.hex(),
            current_public=ring.current_public.hex(),
            previous_private=ring.previous_private.hex(),
            previous_public=ring.previous_public.hex(),
        )
        blob = seal(self.key, msgspec.json.encode(secret), aad=self.aad, random_bytes=random_bytes)
        wire = RingWire(
            v=1,
            version=ring.version,
            since_ns=ring.since_ns,
            current=ring.digest,
            previous=hpke_key_digest(ring.previous_public) if ring.previous_public else "",
            sealed=base64.b64encode(blob).decode(),
        )
        return msgspec.json.encode(wire)

    def decode(self, raw: bytes, where: str) -> HpkeRing:
        """The ring of a KV value; :class:`RingError` naming ``where`` and the reason."""
        try:
            wire = msgspec.json.decode(raw, type=RingWire)
            blob = base64.b64decode(wire.sealed, validate=True)
        except (msgspec.ValidationError, msgspec.DecodeError, binascii.Error) as exc:
            why = f"{where} holds no valid HPKE ring record ({exc})"
            raise RingError("malformed", why) from exc
        try:
            secret = msgspec.json.decode(unseal(self.key, blob, aad=self.aad), type=_Secret)
        except SealError as exc:
            raise RingError(
                "unseal",
                f"{where} (version {wire.version}) does not open under this party's sealing "
                "key: not written by an enclave of this party's build and platform",
            ) from exc
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:  # sealed, but not a ring
            why = f"{where}: the sealed ring does not parse ({exc})"
            raise RingError("malformed", why) from exc
        try:
            ring = HpkeRing(
                secret.version,
                KemSuite(secret.suite),
                bytes.fromhex(secret.current_private),
                bytes.fromhex(secret.current_public),
                secret.since_ns,
                bytes.fromhex(secret.previous_private),
                bytes.fromhex(secret.previous_public),
            )
        except ValueError as exc:
            why = f"{where}: the sealed ring does not parse ({exc})"
            raise RingError("malformed", why) from exc
        outer = (wire.version, wire.since_ns, wire.current, wire.previous)
        prev = hpke_key_digest(ring.previous_public) if ring.previous_public else ""
        if outer != (ring.version, ring.since_ns, ring.digest, prev):
            raise RingError(
                "mismatch",
                f"{where}: the readable fields (version {wire.version}) differ from the sealed "
                f"ring (version {ring.version}); the record was edited",
            )
        if ring.suite is not self.suite:
            raise RingError(
                "suite",
                f"{where} holds {ring.suite.value} keys, this party's config asks "
                f"{self.suite.value}; re-provision the party",
            )
        return ring
