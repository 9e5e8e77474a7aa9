"""Helpers to split plaintext ring vectors into N additive shares and to reveal them.

Production inputs arrive already shared (from the gateway through
:mod:`tecc_contract.sharing`); these helpers serve tests, benchmarks and
simulations, with randomness from ``random_bytes`` (``os.urandom`` by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tecc_contract import prg, sharing
from tecc_contract.ring import RingArray
from tecc_contract.types import RandomBytes


def share(x: RingArray, n: int, *, random_bytes: RandomBytes = os.urandom) -> list[RingArray]:
    """Split ``x`` into ``n`` additive shares (``result[i]`` for party i)."""
    arr = np.asarray(x, dtype=np.uint64)
    parts = sharing.split(arr, n, vector_party=0, random_bytes=random_bytes)
    return [np.ascontiguousarray(sharing.expand_share(p, arr.shape)) for p in parts]


def reveal(shares: Sequence[RingArray]) -> RingArray:
    """Add shares back together (plaintext; tests and the output party only)."""
    out = np.zeros(np.shape(shares[0]), dtype=np.uint64)
    for s in shares:
        out += s
    return out


def seeded_random_bytes(seed: bytes) -> RandomBytes:
    """A deterministic ``random_bytes`` from a 32-byte seed (tests and benchmarks only)."""
    counter = 0

    def draw(k: int) -> bytes:
        nonlocal counter
        counter += 1
        return prg.expand_bytes(seed, k, b"seeded-random/" + counter.to_bytes(8, "little"))

    return draw
