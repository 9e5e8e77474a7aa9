"""The ring Z_2^64 as numpy ``uint64`` arrays.

Addition, subtraction and multiplication of ``uint64`` arrays wrap modulo 2^64,
which is exactly the ring; no operation here ever leaves it. Signed values use
two's complement: the element ``2^64 - a`` stands for ``-a``.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

RING_BITS: Final = 64
RING_DTYPE: Final = np.uint64
ELEMENT_BYTES: Final = 8

RingArray = npt.NDArray[np.uint64]
SignedArray = npt.NDArray[np.int64]


def to_signed(x: RingArray) -> SignedArray:
    """Interpret ring elements as signed 64-bit integers (a view, no copy)."""
    return x.view(np.int64)


def from_signed(x: SignedArray) -> RingArray:
    """Interpret signed 64-bit integers as ring elements (a view, no copy)."""
    return x.view(np.uint64)


def zeros(n: int) -> RingArray:
    """A ring vector of ``n`` zeros."""
    return np.zeros(n, dtype=np.uint64)


def ring_sum(parts: list[RingArray]) -> RingArray:
    """Sum ring vectors of equal shape modulo 2^64."""
    if not parts:
        raise ValueError("ring_sum needs at least one vector")
    acc = parts[0].copy()
    for p in parts[1:]:
        acc += p
    return acc


def to_bytes(x: RingArray) -> bytes:
    """Little-endian wire bytes of a ring vector."""
    return x.astype("<u8", copy=False).tobytes()


def from_bytes(data: bytes) -> RingArray:
    """Parse little-endian wire bytes into a ring vector (copy, native order)."""
    if len(data) % ELEMENT_BYTES:
        raise ValueError(f"ring vector bytes must be a multiple of 8, got {len(data)}")
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)
