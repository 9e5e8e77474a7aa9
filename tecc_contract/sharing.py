"""Additive secret sharing over Z_2^64 with seed compression.

A secret vector ``x`` is split among ``n`` parties so that ``Σ_i x_i = x`` (mod
2^64). Parties other than the *vector party* receive only a 32-byte seed and
expand their share with the AES-CTR PRG (:mod:`tecc_contract.prg`); the vector
party receives the correction ``x − Σ_{i≠v} PRG(seed_i)``. Any ``n − 1`` shares
are uniformly distributed and independent of ``x`` (each is a PRG output, or
the secret masked by at least one PRG output the holder lacks).

The caller chooses the vector party; the gateway rotates it per batch
(``seq mod n``) so no single cluster always carries the long share.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tecc_contract import prg
from tecc_contract.errors import ShareError
from tecc_contract.ring import RingArray
from tecc_contract.types import RandomBytes


@dataclass(frozen=True, slots=True)
class Share:
    """One party's share: either a PRG seed or an explicit correction vector."""

    party: int
    seed: bytes | None = None
    vector: RingArray | None = None

    def __post_init__(self) -> None:
        if (self.seed is None) == (self.vector is None):
            raise ShareError("a share carries exactly one of seed or vector")
        if self.seed is not None and len(self.seed) != prg.SEED_BYTES:
            raise ShareError(f"share seed must be {prg.SEED_BYTES} bytes, got {len(self.seed)}")


def split(
    secret: RingArray,
    n: int,
    *,
    vector_party: int,
    random_bytes: RandomBytes = os.urandom,
    label: bytes = b"",
) -> list[Share]:
    """Split ``secret`` (any shape, uint64) into ``n`` additive shares.

    Returns ``shares[i]`` for party ``i``; ``shares[vector_party]`` holds the
    correction vector, every other share a fresh seed from ``random_bytes``.
    """
    if n < 2:
        raise ShareError(f"secret sharing needs at least 2 parties, got {n}")
    if not 0 <= vector_party < n:
        raise ShareError(f"vector party {vector_party} is not in 0..{n - 1}")
    secret = np.asarray(secret, dtype=np.uint64)
    seeds = {i: random_bytes(prg.SEED_BYTES) for i in range(n) if i != vector_party}
    correction = secret.copy()
    for seed in seeds.values():
        correction -= prg.expand(seed, secret.size, label).reshape(secret.shape)
    return [
        Share(party=i, vector=correction) if i == vector_party else Share(party=i, seed=seeds[i])
        for i in range(n)
    ]


def expand_share(share: Share, shape: int | tuple[int, ...], label: bytes = b"") -> RingArray:
    """The share's vector: the correction itself, or its seed expanded to ``shape``."""
    dims = (shape,) if isinstance(shape, int) else shape
    if share.vector is not None:
        if share.vector.shape != dims:
            raise ShareError(f"share vector has shape {share.vector.shape}, expected {dims}")
        return share.vector
    assert share.seed is not None  # guaranteed by __post_init__
    size = int(np.prod(dims)) if dims else 1
    return prg.expand(share.seed, size, label).reshape(dims)


def reconstruct(vectors: Sequence[RingArray]) -> RingArray:
    """Add all parties' share vectors to recover the secret (mod 2^64)."""
    if len(vectors) < 2:
        raise ShareError(f"reconstruction needs all shares (at least 2), got {len(vectors)}")
    first = np.asarray(vectors[0], dtype=np.uint64)
    acc = first.copy()
    for v in vectors[1:]:
        arr = np.asarray(v, dtype=np.uint64)
        if arr.shape != first.shape:
            raise ShareError(f"share shapes differ: {arr.shape} vs {first.shape}")
        acc += arr
    return acc
