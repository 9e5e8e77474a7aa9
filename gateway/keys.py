"""The gateway's key material: Ed25519 identity key and AES-256 spool key, TPM-sealed.

``provision`` generates both keys in memory, seals each in the TPM under the
configured PCR policy and writes only the sealed blobs (plus the identity
*public* key, for enrolment) to the state directory. ``load_keys`` unseals them
at start-up; a changed PCR state raises
:class:`~gateway.errors.PcrPolicyError` with instructions. Private keys never
touch the disk unsealed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.atrest import private_dir, write_private
from gateway.errors import GatewayError, NotProvisionedError
from gateway.tpm import SealedBlob, Tpm

IDENTITY_FILE = "identity.sealed"
SPOOL_KEY_FILE = "spool-key.sealed"
PUBLIC_FILE = "identity.pub"


@dataclass(frozen=True, slots=True)
class GatewayKeys:
    """Unsealed key material, held in memory only."""

    identity: Ed25519PrivateKey
    spool_key: bytes

    @property
    def public_raw(self) -> bytes:
        """The raw 32-byte Ed25519 public key (what clusters enrol)."""
        return self.identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _write_atomic(path: Path, text: str) -> None:
    write_private(path, text.encode("utf-8"))


def provision(
    tpm: Tpm,
    state_dir: Path,
    pcrs: Sequence[int],
    bank: str = "sha256",
    *,
    force: bool = False,
    random_bytes: Callable[[int], bytes] = os.urandom,
    expected: Mapping[int, bytes] | None = None,
) -> GatewayKeys:
    """Create and seal fresh keys; refuses to overwrite existing ones unless ``force``.

    ``expected``: predicted values of some of ``pcrs`` (the launch measurement)
    to seal to instead of their current values.
    """
    private_dir(state_dir)
    ident_path, spool_path = state_dir / IDENTITY_FILE, state_dir / SPOOL_KEY_FILE
    if not force and (ident_path.exists() or spool_path.exists()):
        raise GatewayError(
            f"{state_dir} already holds sealed keys; pass --force to replace them (the old "
            "identity must then be removed from the clusters' allow-lists)"
        )
    seed, spool_key = random_bytes(32), random_bytes(32)
    keys = GatewayKeys(Ed25519PrivateKey.from_private_bytes(seed), spool_key)
    _write_atomic(ident_path, tpm.seal(seed, pcrs, bank, expected=expected).to_json())
    _write_atomic(spool_path, tpm.seal(spool_key, pcrs, bank, expected=expected).to_json())
    _write_atomic(state_dir / PUBLIC_FILE, keys.public_raw.hex() + "\n")
    return keys


def load_keys(tpm: Tpm, state_dir: Path) -> GatewayKeys:
    """Unseal the identity and spool keys from ``state_dir``."""
    ident_path, spool_path = state_dir / IDENTITY_FILE, state_dir / SPOOL_KEY_FILE
    if not (ident_path.exists() and spool_path.exists()):
        raise NotProvisionedError(
            f"no sealed keys in {state_dir}; run `tecc-gateway provision --config <file>` first"
        )
    seed = tpm.unseal(SealedBlob.from_json(ident_path.read_text(encoding="utf-8")))
    spool_key = tpm.unseal(SealedBlob.from_json(spool_path.read_text(encoding="utf-8")))
    if len(seed) != 32 or len(spool_key) != 32:
        raise GatewayError("unsealed key material has the wrong size; re-provision")
    return GatewayKeys(Ed25519PrivateKey.from_private_bytes(seed), spool_key)


def rotate_identity(
    tpm: Tpm,
    state_dir: Path,
    keys: GatewayKeys,
    pcrs: Sequence[int],
    bank: str = "sha256",
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
    expected: Mapping[int, bytes] | None = None,
) -> GatewayKeys:
    """Replace the identity key only, sealed like :func:`provision`; the spool key is kept."""
    seed = random_bytes(32)
    new = GatewayKeys(Ed25519PrivateKey.from_private_bytes(seed), keys.spool_key)
    _write_atomic(
        state_dir / IDENTITY_FILE, tpm.seal(seed, pcrs, bank, expected=expected).to_json()
    )
    _write_atomic(state_dir / PUBLIC_FILE, new.public_raw.hex() + "\n")
    return new
