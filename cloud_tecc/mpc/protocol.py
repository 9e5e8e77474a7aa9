"""The sans-IO core: protocol steps as generators that yield one opening per round.

A protocol step is a generator. Each ``yield`` hands the driver an
:class:`Open`: this party's shares of some *masked* values (already uniformly
random to anyone without the mask). The driver sends them to every peer in one
message, receives theirs, and sends back the opened values (the sum, or XOR, of
all shares). When the generator returns, its return value is this party's share
of the result. Steps compose with ``yield from``; a step never touches a socket,
a clock or a random source, so it is deterministic given its inputs.

Wire encoding of one round: the parts' bytes back to back, each part either the
raw little-endian array (8, 16, 32 or 64 live bits) or densely packed
(1, 2 or 4 live bits per value). Both sides know the shapes, so a message of
any other length is a :class:`ProtocolError`.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import numpy as np

from cloud_tecc.mpc.bits import U8, pack, packed_len, unpack
from cloud_tecc.mpc.correlations import AnyArray
from cloud_tecc.mpc.errors import MpcParameterError, ProtocolError
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.ring import RingArray

T = TypeVar("T")
Opened = list[AnyArray]
#: A protocol step returning ``T``.
Proto = Generator["Open", Opened, T]

if sys.byteorder != "little":  # pragma: no cover - the wire is little-endian raw numpy
    raise ImportError("cloud_tecc.mpc needs a little-endian host")

PUBLIC_PARTY: Final = 0
"""The party that adds public constants (and receives dealer corrections)."""


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a protocol step knows about its party: index, party count, fraction bits."""

    party: int
    n: int
    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if self.n < 2:
            raise MpcParameterError(f"MPC needs at least 2 parties, got {self.n}")
        if not 0 <= self.party < self.n:
            raise MpcParameterError(f"party index {self.party} is not in 0..{self.n - 1}")
        if not 0 <= self.frac_bits <= 40:
            raise MpcParameterError(f"frac_bits must be in 0..40, got {self.frac_bits}")

    @property
    def leader(self) -> bool:
        """True for the party that adds public constants."""
        return self.party == PUBLIC_PARTY


@dataclass(frozen=True, slots=True)
class Part:
    """One array of this party's masked shares to open: live bits and XOR or ring sharing.

    The driver never modifies ``data`` (it may be on its way to a peer).
    """

    data: AnyArray
    bits: int
    arith: bool

    @property
    def nbytes(self) -> int:
        """Encoded size in bytes."""
        return packed_len(self.data.shape[0], self.bits)


@dataclass(frozen=True, slots=True)
class Open:
    """One round's worth of values to open to all parties.

    ``wire`` optionally holds the parts already encoded back to back (a step
    that computed its parts into one buffer saves the copy).
    """

    parts: tuple[Part, ...]
    wire: U8 | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the message this party sends to each peer."""
        return sum(p.nbytes for p in self.parts)


def as_ring(a: AnyArray) -> RingArray:
    """Type a uint64 result as a ring array (no conversion; for the type checker)."""
    return cast("RingArray", a)


def arith(data: AnyArray) -> Part:
    """A ring (mod 2^64) share to open."""
    return Part(np.ascontiguousarray(data, dtype=np.uint64), 64, arith=True)


def xor(data: AnyArray, bits: int) -> Part:
    """An XOR share of ``bits`` live bits per value to open."""
    return Part(np.ascontiguousarray(data), bits, arith=False)


def encode(msg: Open) -> U8:
    """The bytes this party sends each peer for ``msg`` (one contiguous buffer)."""
    if msg.wire is not None:
        if msg.wire.nbytes != msg.nbytes:
            raise ProtocolError("pre-encoded round buffer does not match its parts")
        return msg.wire
    if len(msg.parts) == 1 and msg.parts[0].bits >= 8:
        return msg.parts[0].data.view(np.uint8)
    buf = np.empty(msg.nbytes, dtype=np.uint8)
    off = 0
    for p in msg.parts:
        nb = p.nbytes
        if p.bits >= 8:
            buf[off : off + nb] = p.data.view(np.uint8)
        else:
            buf[off : off + nb] = pack(p.data.view(np.uint8), p.bits)
        off += nb
    return buf


def _raw(msg: Open, payload: bytes | bytearray | memoryview) -> U8:
    raw = np.frombuffer(payload, dtype=np.uint8)
    if raw.shape[0] != msg.nbytes:
        raise ProtocolError(
            f"peer message has {raw.shape[0]} bytes, expected {msg.nbytes}: "
            "the parties run different programs or inputs of different sizes"
        )
    return raw


def decode(msg: Open, payload: bytes | bytearray | memoryview) -> list[AnyArray]:
    """Parse a peer's message for ``msg`` into arrays shaped like this party's parts."""
    raw = _raw(msg, payload)
    out: list[AnyArray] = []
    off = 0
    for p in msg.parts:
        nb = p.nbytes
        seg = raw[off : off + nb]
        if p.bits >= 8:
            out.append(seg.view(p.data.dtype))
        else:
            out.append(unpack(seg, p.bits, p.data.shape[0]))
        off += nb
    return out


def combine(msg: Open, peers: Sequence[list[AnyArray]]) -> Opened:
    """Open: add (ring parts) or XOR (bit parts) the peers' shares to this party's.

    Returns new arrays; the parts' own arrays are left untouched.
    """
    out: Opened = []
    for k, p in enumerate(msg.parts):
        op = np.add if p.arith else np.bitwise_xor
        acc = op(p.data, peers[0][k])
        for peer in peers[1:]:
            op(acc, peer[k], out=acc)
        out.append(acc)
    return out


def open_peers(msg: Open, payloads: Sequence[bytes | bytearray | memoryview]) -> Opened:
    """The peers' messages decoded and combined (:func:`decode`, :func:`combine`), faster.

    Every peer's part is read in place from its message and added (or XORed)
    into one new array per part. A packed XOR part (1, 2 or 4 live bits) is
    XORed across the peers while still packed, then unpacked once: packing only
    moves bits, so it commutes with XOR, and the result equals :func:`combine`
    exactly.
    """
    raws = [_raw(msg, p) for p in payloads]
    out: Opened = []
    off = 0
    for p in msg.parts:
        nb = p.nbytes
        segs = [r[off : off + nb] for r in raws]
        off += nb
        if p.bits < 8 and not p.arith:
            packed = segs[0]
            if len(segs) > 1:
                packed = np.bitwise_xor(segs[0], segs[1])
                for seg in segs[2:]:
                    packed ^= seg
            acc = unpack(packed, p.bits, p.data.shape[0])
            if acc.dtype == p.data.dtype:
                acc ^= p.data
            else:
                acc = np.bitwise_xor(p.data, acc)
            out.append(acc)
            continue
        op = np.add if p.arith else np.bitwise_xor
        views = [
            seg.view(p.data.dtype) if p.bits >= 8 else unpack(seg, p.bits, p.data.shape[0])
            for seg in segs
        ]
        acc = op(p.data, views[0])
        for v in views[1:]:
            op(acc, v, out=acc)
        out.append(acc)
    return out
