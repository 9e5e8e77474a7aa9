"""Vectorised bit manipulation on numpy words: bit reversal and sub-byte packing.

The comparison circuit keeps the 64 bits of each element in *index
bit-reversed* order (bit ``i`` at position ``rev6(i)``, where ``rev6`` reverses
the six bits of the index), so that every level of its prefix tree pairs lane ``q`` of the low half
of a word with lane ``q`` of the high half: one shift and one mask per level,
no per-level bit shuffling. :func:`pack` squeezes values of 1, 2 or 4 live bits
per byte densely so the wire carries only live bits.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from tecc_contract.ring import RingArray

U8 = npt.NDArray[np.uint8]

# (index bit j, index bit k) swaps that compose rev6: b0↔b5, b1↔b4, b2↔b3.
_SWAPS: Final = tuple(
    (
        np.uint64((1 << k) - (1 << j)),
        np.uint64(sum(1 << p for p in range(64) if (p >> j) & 1 and not (p >> k) & 1)),
    )
    for j, k in ((0, 5), (1, 4), (2, 3))
)


def bitrev64(x: RingArray) -> RingArray:
    """Move bit ``i`` of every element to bit ``rev6(i)`` (an involution; new array)."""
    out = np.array(x, dtype=np.uint64, copy=True)
    t = np.empty_like(out)
    for delta, mask in _SWAPS:
        np.right_shift(out, delta, out=t)
        t ^= out
        t &= mask
        out ^= t
        t <<= delta
        out ^= t
    return out


def packed_len(n: int, bits: int) -> int:
    """Bytes that :func:`pack` produces for ``n`` values of ``bits`` live bits."""
    if bits >= 8:
        return n * (bits // 8)
    per = 8 // bits
    return -(-n // per)


def pack(v: U8, bits: int) -> U8:
    """Pack ``bits``-bit values (1, 2 or 4; held one per uint8) densely into bytes."""
    if bits == 1:
        return np.packbits(v, bitorder="little")
    per = 8 // bits
    n = v.shape[0]
    pad = (-n) % per
    if pad:
        v = np.concatenate([v, np.zeros(pad, dtype=np.uint8)])
    lanes = v.reshape(-1, per)
    out = lanes[:, 0].copy()
    for k in range(1, per):
        out |= lanes[:, k] << np.uint8(k * bits)
    return out


def unpack(data: U8, bits: int, n: int) -> U8:
    """Inverse of :func:`pack`: ``n`` values of ``bits`` live bits, one per uint8."""
    if bits == 1:
        return np.unpackbits(data, count=n, bitorder="little")
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((data.shape[0], per), dtype=np.uint8)
    for k in range(per):
        np.bitwise_and(data >> np.uint8(k * bits), mask, out=out[:, k])
    return out.reshape(-1)[:n]
