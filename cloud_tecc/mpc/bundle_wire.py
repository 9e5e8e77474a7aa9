"""The dealer wire protocol: the party's one request and the batch frame it answers with.

Both travel inside the authenticated link (:mod:`cloud_tecc.mpc.wslink`).
There is no JSON on this link: the party sends the 4-byte request
:data:`REQUEST` (``NEXT``), decoded once at the boundary by
:func:`decode_request` into :class:`DealerRequest`; anything else is a
:class:`ProtocolError` naming what arrived, and the dealer drops that link
(and counts it) while it keeps serving the others.

The batch frame: ``MAGIC ‖ u16 party ‖ u64 seq ‖ u8 bundles`` then per bundle
``u8 kind ‖ u8 frac_bits ‖ u64 count ‖ seed(32)`` followed, for party 0 only, by
the raw little-endian correction arrays in layout order. Anything else is a
:class:`CorrelationError` naming the field (``party``, bundle ``i``'s
``kind``, ``count`` or correction, trailing bytes), and so is a bundle of more
than ``MAX_COUNT`` correlations: party 1 receives only a seed, so its count
is not bounded by the frame size and would otherwise let a dealer make it
allocate at will.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import numpy as np

from cloud_tecc.mpc.correlations import Bundle, Kind, correction_fields
from cloud_tecc.mpc.errors import CorrelationError, ProtocolError

#: The one control message: a party asks for its part of the next batch.
REQUEST: Final = b"NEXT"
MAGIC: Final = b"TMD1"
_HEAD: Final = struct.Struct("<4sHQB")
_BUNDLE: Final = struct.Struct("<BBQ32s")
_KINDS: Final = tuple(Kind)
#: Upper bound on one bundle (a dealer batch of 1 M comparisons holds 2^20-scale bundles).
MAX_COUNT: Final = 1 << 26


class DealerRequest(enum.Enum):
    """A decoded request from a party (the protocol has one)."""

    NEXT = REQUEST


def decode_request(data: bytes) -> DealerRequest:
    """The party's request, once at the boundary; :class:`ProtocolError` for anything else."""
    try:
        return DealerRequest(data)
    except ValueError:
        shown = data[:16].hex() + ("…" if len(data) > 16 else "")
        raise ProtocolError(
            f"dealer request must be the {len(REQUEST)} bytes {REQUEST!r}, "
            f"got {len(data)} bytes ({shown or 'empty'}): party and dealer builds differ?"
        ) from None


def encode_batch(party: int, seq: int, bundles: list[Bundle]) -> bytes:
    """Serialise ``bundles`` (all for ``party``) as one frame."""
    parts: list[bytes | memoryview] = [_HEAD.pack(MAGIC, party, seq, len(bundles))]
    for b in bundles:
        parts.append(_BUNDLE.pack(_KINDS.index(b.kind), b.frac_bits, b.count, b.seed))
        fields = correction_fields(b.kind) if party == 0 else ()
        parts.extend(np.ascontiguousarray(b.corrections[f.name]).data.cast("B") for f in fields)
    return b"".join(parts)


def batch_seq(data: bytes, *, party: int) -> int:
    """The sequence number of a frame addressed to ``party`` (its header only)."""
    if len(data) < _HEAD.size:
        raise CorrelationError(
            f"dealer frame is truncated: {len(data)} bytes, the header alone is {_HEAD.size}"
        )
    magic, to, seq, _ = _HEAD.unpack_from(data)
    if magic != MAGIC or to != party:
        raise CorrelationError(f"not a dealer frame for party {party} (magic {magic!r}, to {to})")
    return int(seq)


def decode_batch(data: bytes, *, party: int) -> tuple[int, list[Bundle]]:
    """Parse a frame addressed to ``party``; return (seq, bundles)."""
    if len(data) < _HEAD.size:
        raise CorrelationError(
            f"dealer frame is truncated: {len(data)} bytes, the header alone is {_HEAD.size}"
        )
    magic, to, seq, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorrelationError(f"not a dealer frame: magic is {magic!r}, not {MAGIC!r}")
    if to != party:
        raise CorrelationError(
            f"dealer frame for party {to} (field party) arrived at party {party}"
        )
    off = _HEAD.size
    out: list[Bundle] = []
    for i in range(count):
        if len(data) < off + _BUNDLE.size:
            raise CorrelationError(f"dealer frame is truncated in bundle {i} of {count}")
        k, frac, n, seed = _BUNDLE.unpack_from(data, off)
        off += _BUNDLE.size
        if k >= len(_KINDS):
            raise CorrelationError(
                f"dealer frame bundle {i}: kind = {k} is not a correlation kind "
                f"(0..{len(_KINDS) - 1})"
            )
        if n > MAX_COUNT:
            raise CorrelationError(f"dealer frame bundle {i}: count = {n} exceeds {MAX_COUNT}")
        kind = _KINDS[k]
        corr = {}
        for f in correction_fields(kind) if party == 0 else ():
            nb = f.itemsize * n
            if len(data) < off + nb:
                raise CorrelationError(
                    f"dealer frame is truncated in bundle {i}'s correction {f.name}"
                )
            corr[f.name] = np.frombuffer(data, dtype=f.dtype, count=n, offset=off)
            off += nb
        out.append(Bundle(kind, party, n, frac, seed, corr))
    if off != len(data):
        raise CorrelationError(f"dealer frame has {len(data) - off} trailing bytes")
    return seq, out
