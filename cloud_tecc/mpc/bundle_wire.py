"""Wire format of one dealer batch for one party: seeds plus party 0's corrections.

``MAGIC ‖ u16 party ‖ u64 seq ‖ u8 bundles`` then per bundle
``u8 kind ‖ u8 frac_bits ‖ u64 count ‖ seed(32)`` followed, for party 0 only, by
the raw little-endian correction arrays in layout order. Anything else is a
:class:`CorrelationError`, and so is a bundle of more than ``MAX_COUNT``
correlations: party 1 receives only a seed, so its count is not bounded by
the frame size and would otherwise let a dealer make it allocate at will.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

from cloud_tecc.mpc.correlations import Bundle, Kind, correction_fields
from cloud_tecc.mpc.errors import CorrelationError

MAGIC: Final = b"TMD1"
_HEAD: Final = struct.Struct("<4sHQB")
_BUNDLE: Final = struct.Struct("<BBQ32s")
_KINDS: Final = tuple(Kind)
#: Upper bound on one bundle (a dealer batch of 1 M comparisons holds 2^20-scale bundles).
MAX_COUNT: Final = 1 << 26


def encode_batch(party: int, seq: int, bundles: list[Bundle]) -> bytes:
    """Serialise ``bundles`` (all for ``party``) as one frame."""
    parts: list[bytes | memoryview] = [_HEAD.pack(MAGIC, party, seq, len(bundles))]
    for b in bundles:
        parts.append(_BUNDLE.pack(_KINDS.index(b.kind), b.frac_bits, b.count, b.seed))
        fields = correction_fields(b.kind) if party == 0 else ()
        parts.extend(np.ascontiguousarray(b.corrections[f.name]).data.cast("B") for f in fields)
    return b"".join(parts)


def decode_batch(data: bytes, *, party: int) -> tuple[int, list[Bundle]]:
    """Parse a frame addressed to ``party``; return (seq, bundles)."""
    if len(data) < _HEAD.size:
        raise CorrelationError("dealer frame is truncated")
    magic, to, seq, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorrelationError("not a dealer frame (bad magic)")
    if to != party:
        raise CorrelationError(f"dealer frame for party {to} arrived at party {party}")
    off = _HEAD.size
    out: list[Bundle] = []
    for _ in range(count):
        if len(data) < off + _BUNDLE.size:
            raise CorrelationError("dealer frame is truncated")
        k, frac, n, seed = _BUNDLE.unpack_from(data, off)
        off += _BUNDLE.size
        if k >= len(_KINDS):
            raise CorrelationError(f"unknown correlation kind code {k}")
        if n > MAX_COUNT:
            raise CorrelationError(f"dealer bundle of {n} correlations exceeds {MAX_COUNT}")
        kind = _KINDS[k]
        corr = {}
        for f in correction_fields(kind) if party == 0 else ():
            nb = f.itemsize * n
            if len(data) < off + nb:
                raise CorrelationError("dealer frame is truncated")
            corr[f.name] = np.frombuffer(data, dtype=f.dtype, count=n, offset=off)
            off += nb
        out.append(Bundle(kind, party, n, frac, seed, corr))
    if off != len(data):
        raise CorrelationError(f"dealer frame has {len(data) - off} trailing bytes")
    return seq, out
