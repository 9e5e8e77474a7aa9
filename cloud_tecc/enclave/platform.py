"""The simulated TEE platform: an attestation key and a sealing secret on disk.

A real platform keeps both inside the CPU (SGX/TDX/SEV-SNP); the simulation
keeps them in a state directory readable by whoever runs the service, which is
exactly what it does *not* protect against (see docs/CLOUD.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.errors import CloudConfigError

_KEY_FILE: Final = "attestation_key"
_SECRET_FILE: Final = "sealing_secret"  # noqa: S105 - a file name


def platform_key_id(public_key: Ed25519PublicKey) -> str:
    """The identifier quotes carry for a platform key: ``sim-`` + 16 hex digits."""
    return "sim-" + hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class SimulatedPlatform:
    """A simulated platform: Ed25519 attestation key plus a 32-byte sealing secret."""

    attestation_key: Ed25519PrivateKey
    sealing_secret: bytes

    @property
    def key_id(self) -> str:
        """This platform's key identifier."""
        return platform_key_id(self.attestation_key.public_key())

    @property
    def public_key_hex(self) -> str:
        """The attestation public key as hex, for verifier configuration."""
        return self.attestation_key.public_key().public_bytes_raw().hex()

    @classmethod
    def load_or_create(
        cls, state_dir: Path, *, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> SimulatedPlatform:
        """Open the platform state in ``state_dir``, creating it on first use."""
        state_dir.mkdir(parents=True, exist_ok=True)
        key_path, secret_path = state_dir / _KEY_FILE, state_dir / _SECRET_FILE
        if not key_path.exists():
            _write_private(key_path, random_bytes(32))
        if not secret_path.exists():
            _write_private(secret_path, random_bytes(32))
        key_raw, secret = key_path.read_bytes(), secret_path.read_bytes()
        if len(key_raw) != 32 or len(secret) != 32:
            raise CloudConfigError(
                f"platform state in {state_dir} is corrupt; recreate the directory"
            )
        return cls(Ed25519PrivateKey.from_private_bytes(key_raw), secret)
