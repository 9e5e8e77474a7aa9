"""Sealed storage: AES-256-GCM under a key bound to the enclave measurement.

The sealing key is ``HKDF-SHA256(platform sealing secret, info = label ||
measurement)``. Data sealed by one build opens only under the same measurement
on the same platform; a modified build or policy gets a different key and
:func:`unseal` raises :class:`SealError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloud_tecc.errors import SealError

_INFO: Final = b"tecc-seal-v1/"
_NONCE: Final = 12


def sealing_key(platform_secret: bytes, measurement: bytes) -> bytes:
    """Derive the 32-byte sealing key of one measurement on one platform."""
    if len(platform_secret) < 32 or len(measurement) != 32:
        raise SealError("sealing needs a >=32-byte platform secret and a 32-byte measurement")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + measurement)
    return hkdf.derive(platform_secret)


def seal(
    key: bytes,
    plaintext: bytes,
    *,
    aad: bytes,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``plaintext``; the result is ``nonce || ciphertext+tag``."""
    nonce = random_bytes(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Decrypt a sealed blob; :class:`SealError` if the key or data do not match."""
    if len(blob) < _NONCE + 16:
        raise SealError("sealed blob is truncated; restore it from backup or re-provision")
    try:
        return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
    except InvalidTag as exc:
        raise SealError(
            "sealed data does not open under this enclave measurement: the code bundle or "
            "analytics policy changed, or the file was tampered with; re-provision the "
            "service keys (and re-enrol them) if the change is intended"
        ) from exc
