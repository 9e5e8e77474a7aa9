"""A cryptographic PRG: AES-256 in counter mode, keyed by a 32-byte seed.

``expand(seed, n, label)`` is the keystream of AES-256-CTR under key ``seed``
and a 16-byte initial counter block derived from ``label`` (SHA-256, first 16
bytes), read as ``n`` little-endian uint64 words. Different labels give
independent streams from the same seed (domain separation), so one seed can
feed the value column, the x² column and histogram buckets of a batch.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tecc_contract.errors import ParameterError
from tecc_contract.ring import RingArray

SEED_BYTES: Final = 32


def _counter_block(label: bytes) -> bytes:
    return hashlib.sha256(b"tecc-prg-v1/" + label).digest()[:16]


def expand(seed: bytes, n: int, label: bytes = b"") -> RingArray:
    """Return ``n`` pseudo-random ring elements from ``seed`` and ``label``."""
    if len(seed) != SEED_BYTES:
        raise ParameterError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if n < 0:
        raise ParameterError(f"cannot expand a negative length {n}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(_counter_block(label))).encryptor()
    stream = enc.update(bytes(8 * n))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=False)


def expand_bytes(seed: bytes, nbytes: int, label: bytes = b"") -> bytes:
    """Return ``nbytes`` pseudo-random bytes from ``seed`` and ``label``."""
    if len(seed) != SEED_BYTES:
        raise ParameterError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(_counter_block(label))).encryptor()
    return enc.update(bytes(nbytes))
