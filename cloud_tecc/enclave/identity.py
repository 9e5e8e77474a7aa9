"""A service's enclave identity: measurement, sealed keys and quote generation.

On first start the service generates its signing key (Ed25519) and its HPKE
key (X25519, or ML-KEM-768+X25519 when configured) and seals them under its
measurement into ``state_dir``. Every later start unseals them; if the code
bundle or the policy changed, unsealing fails with :class:`SealError` and the
service refuses to start.

The HPKE key can be rotated (:meth:`Enclave.rotate`): the service then holds
the current and the previous key, quotes carry the current one and a digest
of the previous one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.enclave.sealing import seal, sealing_key, unseal
from cloud_tecc.enclave.tls import generate_tls_key
from tecc_contract.attestation import TLS_CLAIM, Quote, hpke_key_digest, sign_quote
from tecc_contract.keys import (
    HpkePrivateKey,
    KemSuite,
    generate_cluster_keypair_raw,
    load_private_key,
)
from tecc_contract.manifest import POLICY_CLAIM

_SEALED_FILE: Final = "sealed_keys.bin"


@dataclass(frozen=True)
class ServiceKeys:
    """The private keys of one service: request signing and HPKE decryption."""

    sign: Ed25519PrivateKey
    suite: KemSuite
    hpke_private_raw: bytes
    hpke_public_raw: bytes
    #: The HPKE key before the last rotation (empty if never rotated) and when it was replaced.
    previous_private_raw: bytes = b""
    previous_public_raw: bytes = b""
    rotated_ns: int = 0
    #: The HTTPS listener's private key (P-256, PKCS#8 DER; cloud_tecc/enclave/tls.py).
    tls_der: bytes = b""

    @property
    def hpke(self) -> HpkePrivateKey:
        """The HPKE private key as a cryptography object."""
        return load_private_key(self.suite, self.hpke_private_raw)

    @property
    def previous_hpke(self) -> HpkePrivateKey | None:
        """The HPKE private key before the last rotation, if any."""
        if not self.previous_private_raw:
            return None
        return load_private_key(self.suite, self.previous_private_raw)

    def rotated(self, now_ns: int) -> ServiceKeys:
        """A fresh HPKE key; the current one becomes the previous (same signing key)."""
        private_raw, public_raw = generate_cluster_keypair_raw(self.suite)
        return ServiceKeys(
            self.sign,
            self.suite,
            private_raw,
            public_raw,
            self.hpke_private_raw,
            self.hpke_public_raw,
            now_ns,
            self.tls_der,
        )

    def to_bytes(self) -> bytes:
        """Serialise for sealing (never written anywhere unsealed)."""
        doc = {
            "sign": self.sign.private_bytes_raw().hex(),
            "suite": self.suite.value,
            "hpke": self.hpke_private_raw.hex(),
            "hpke_pub": self.hpke_public_raw.hex(),
            "hpke_prev": self.previous_private_raw.hex(),
            "hpke_prev_pub": self.previous_public_raw.hex(),
            "rotated_ns": self.rotated_ns,
            "tls": self.tls_der.hex(),
        }
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ServiceKeys:
        """Parse :meth:`to_bytes` output."""
        doc = json.loads(data)
        return cls(
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(doc["sign"])),
            KemSuite(doc["suite"]),
            bytes.fromhex(doc["hpke"]),
            bytes.fromhex(doc["hpke_pub"]),
            bytes.fromhex(doc.get("hpke_prev", "")),
            bytes.fromhex(doc.get("hpke_prev_pub", "")),
            int(doc.get("rotated_ns", 0)),
            bytes.fromhex(doc.get("tls", "")),
        )

    @classmethod
    def generate(cls, suite: KemSuite) -> ServiceKeys:
        """Fresh keys from the OS CSPRNG."""
        private_raw, public_raw = generate_cluster_keypair_raw(suite)
        return cls(
            Ed25519PrivateKey.generate(), suite, private_raw, public_raw, tls_der=generate_tls_key()
        )


def _store(
    path: Path, key: bytes, keys: ServiceKeys, aad: bytes, random_bytes: Callable[[int], bytes]
) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(seal(key, keys.to_bytes(), aad=aad, random_bytes=random_bytes))
    os.replace(tmp, path)


@dataclass(frozen=True)
class Enclave:
    """A running (simulated) enclave: who it is and the keys only it can open."""

    role: str
    service_id: str
    measurement: bytes
    platform: SimulatedPlatform
    keys: ServiceKeys
    #: Digest of the security-relevant config (quote claim ``config``), if measured.
    config: bytes = b""
    #: SHA-256 (hex) of the SPKI its HTTPS listener presents (claim ``tls_spki``), if any.
    tls_spki: str = ""
    #: Digest of its analytics policy (claim ``policy``, what release manifests name), if set.
    policy: bytes = b""

    @classmethod
    def open(
        cls,
        *,
        role: str,
        service_id: str,
        measurement: bytes,
        platform: SimulatedPlatform,
        state_dir: Path,
        suite: KemSuite = KemSuite.X25519,
        random_bytes: Callable[[int], bytes] = os.urandom,
        config: bytes = b"",
        policy: bytes = b"",
    ) -> Enclave:
        """Unseal the service keys from ``state_dir``, or create and seal them."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / _SEALED_FILE
        key = sealing_key(platform.sealing_secret, measurement)
        aad = f"tecc-keys/{role}/{service_id}".encode()
        if path.exists():
            keys = ServiceKeys.from_bytes(unseal(key, path.read_bytes(), aad=aad))
            if not keys.tls_der:  # sealed before the listener served TLS
                keys = replace(keys, tls_der=generate_tls_key())
                _store(path, key, keys, aad, random_bytes)
        else:
            keys = ServiceKeys.generate(suite)
            _store(path, key, keys, aad, random_bytes)
        return cls(role, service_id, measurement, platform, keys, config, policy=policy)

    def rotate(
        self,
        state_dir: Path,
        now_ns: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> Enclave:
        """Seal a fresh HPKE key (keeping the current one as previous); the rotated enclave.

        Its quotes carry the new key and, as the claim ``hpke_prev``, the
        SHA-256 of the key it replaces, so a gateway that pinned the old key
        can follow the rotation under attestation.
        """
        keys = self.keys.rotated(now_ns)
        key = sealing_key(self.platform.sealing_secret, self.measurement)
        aad = f"tecc-keys/{self.role}/{self.service_id}".encode()
        _store(state_dir / _SEALED_FILE, key, keys, aad, random_bytes)
        return replace(self, keys=keys)

    def public_keys(self) -> dict[str, bytes]:
        """The public keys a quote binds: ``sign`` (Ed25519) and ``hpke`` (raw HPKE key)."""
        return {
            "sign": self.keys.sign.public_key().public_bytes_raw(),
            "hpke": self.keys.hpke_public_raw,
        }

    def _claims(self) -> dict[str, str]:
        claims = {}
        if self.config:
            claims["config"] = self.config.hex()
        if self.keys.previous_public_raw:
            claims["hpke_prev"] = hpke_key_digest(self.keys.previous_public_raw)
        if self.tls_spki:
            claims[TLS_CLAIM] = self.tls_spki
        if self.policy:
            claims[POLICY_CLAIM] = self.policy.hex()
        return claims

    def quote(self, nonce: bytes, now_ns: int) -> Quote:
        """A platform-signed quote over measurement, public keys and ``nonce``."""
        unsigned = Quote(
            role=self.role,
            service_id=self.service_id,
            measurement=self.measurement,
            keys=self.public_keys(),
            hpke_suite=self.keys.suite.value,
            nonce=nonce,
            issued_ns=now_ns,
            platform_key_id=self.platform.key_id,
            signature=b"",
            claims=self._claims(),
        )
        return sign_quote(unsigned, self.platform.attestation_key)
