"""Dealer correlation types, their field layouts and seed-compressed expansion.

Every correlation kind is a list of per-element *fields*. *Random* fields are
pure PRG output for every party; *derived* fields (the ones that must satisfy a
relation, such as ``c = a·b``) are PRG output for parties 1..N−1 and an explicit
correction array for party 0, chosen by the dealer so the relation holds. So
per batch every party receives a 32-byte seed and only party 0 receives data
proportional to the batch size.

Keystream layout: the random fields are consecutive segments of
:func:`keystream` ``(seed, ·, KIND + b"/random")`` and the derived fields of
``KIND + b"/derived"``; each segment starts at an 8-byte aligned offset.
XOR-shared fields of fewer than 8 live bits are masked to their live bits.
The correlation PRG is AES-128-CTR (128-bit security, like the masks it
draws) written straight into a preallocated buffer: about 5 GB/s here, five
times the allocate-and-copy ``update`` path of :mod:`tecc_contract.prg`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cloud_tecc.mpc.errors import CorrelationError
from tecc_contract import prg

AnyArray = npt.NDArray[Any]  # uint8..uint64

#: Lanes after the comparison's first prefix-tree level (64 → 32): local, no
#: round, from the dealer's XOR shares of ``r_hi ∧ r_lo`` per lane (field ``q32``).
FIRST_LANES: Final = 32
#: Half-widths of the comparison prefix-tree levels with a Beaver AND round
#: (32 live lanes → 16 → … → 2); the final 2 → 1 level is fused with b2a.
CMP_LEVELS: Final = (16, 8, 4, 2)


class Kind(enum.StrEnum):
    """Correlation kinds; the value is the PRG domain-separation label."""

    TRIPLE = "triple"  # Beaver multiplication triple a, b, c = a·b
    TRUNC = "trunc"  # truncation pair r, msb(r), (r mod 2^63) >> f
    DABIT = "dabit"  # random bit, XOR-shared and arithmetic-shared
    CMP = "cmp"  # edaBit + prefix-tree AND triples + fused final level
    SQUARE = "square"  # square pair a, aa = a² (the wire numbers kinds in this order)
    CMP_SELECT = "cmpsel"  # a comparison's correlations + its output bit times its input


@dataclass(frozen=True, slots=True)
class Field:
    """One per-element field of a correlation: dtype, live bits, derived or random."""

    name: str
    dtype: type[np.unsignedinteger[Any]]
    bits: int
    derived: bool

    @property
    def itemsize(self) -> int:
        """Bytes per element in memory (and on the wire when not packed)."""
        return int(np.dtype(self.dtype).itemsize)


def _lane_dtype(bits: int) -> type[np.unsignedinteger[Any]]:
    return {32: np.uint32, 16: np.uint16}.get(bits, np.uint8)  # type: ignore[return-value]


def _cmp_fields() -> tuple[Field, ...]:
    fields = [Field("r_bool", np.uint64, 64, derived=False)]
    for h in CMP_LEVELS:
        fields += [Field(f"{nm}{h}", _lane_dtype(h), h, derived=False) for nm in ("a", "b", "bp")]
    fields += [Field(nm, np.uint8, 1, derived=False) for nm in ("fa", "fb", "fc")]
    fields.append(Field("r_arith", np.uint64, 64, derived=True))
    fields.append(Field(f"q{FIRST_LANES}", np.uint32, FIRST_LANES, derived=True))
    fields += [Field(f"c{h}", _lane_dtype(h), h, derived=True) for h in CMP_LEVELS]
    fields += [Field(f"cp{h}", _lane_dtype(h), h, derived=True) for h in CMP_LEVELS]
    fields += [Field(f"m_{nm}", np.uint64, 64, derived=True) for nm in FUSED]
    return tuple(fields)


#: Arithmetic shares for the fused last level, from its XOR mask bits α, β, γ:
#: ``m_a = α``, ``m_b = β(1−2α)``, ``m_c = γ(1−2α)``, ``m_bc = βγ(1−2α)``.
FUSED: Final = ("a", "b", "c", "bc")

LAYOUTS: Final[dict[Kind, tuple[Field, ...]]] = {
    Kind.TRIPLE: (
        Field("a", np.uint64, 64, derived=False),
        Field("b", np.uint64, 64, derived=False),
        Field("c", np.uint64, 64, derived=True),
    ),
    Kind.TRUNC: (
        Field("r", np.uint64, 64, derived=False),
        Field("r_msb", np.uint64, 64, derived=True),
        Field("r_t", np.uint64, 64, derived=True),
    ),
    Kind.DABIT: (
        Field("b_bool", np.uint8, 1, derived=False),
        Field("b_arith", np.uint64, 64, derived=True),
    ),
    Kind.CMP: _cmp_fields(),
    Kind.SQUARE: (
        Field("a", np.uint64, 64, derived=False),
        Field("aa", np.uint64, 64, derived=True),
    ),
    Kind.CMP_SELECT: (
        *_cmp_fields(),
        *(Field(f"p_{nm}", np.uint64, 64, derived=True) for nm in FUSED),
    ),
}
#: The products ``m_·r`` of a :attr:`Kind.CMP_SELECT` correlation, after its comparison fields.
PRODUCTS: Final = tuple(f"p_{nm}" for nm in FUSED)


def _segments(kind: Kind, derived: bool, count: int) -> tuple[list[tuple[Field, int]], int]:
    out: list[tuple[Field, int]] = []
    offset = 0
    for f in LAYOUTS[kind]:
        if f.derived == derived:
            out.append((f, offset))
            offset += -(-(f.itemsize * count) // 8) * 8
    return out, offset


_ZEROS = bytes(1 << 20)
_AES_BLOCK = 16


def keystream(seed: bytes, nbytes: int, label: bytes) -> npt.NDArray[np.uint8]:
    """``nbytes`` of AES-128-CTR keystream for a correlation seed and a label (a new array).

    Key ``SHA-256("tecc-corr-key-v1/" ‖ seed)[:16]``, initial counter block
    ``SHA-256("tecc-corr-ctr-v1/" ‖ label)[:16]``: distinct labels start the
    counter at independent 128-bit points, so their streams do not overlap.
    """
    out = np.empty(nbytes + _AES_BLOCK, dtype=np.uint8)
    keystream_into(seed, label, out)
    return out[:nbytes]


def keystream_into(seed: bytes, label: bytes, out: npt.NDArray[np.uint8]) -> None:
    """:func:`keystream` written into ``out[: len(out) − 16]`` (``out`` has 16 spare bytes)."""
    if len(seed) != prg.SEED_BYTES:
        raise CorrelationError(f"correlation seed must be {prg.SEED_BYTES} bytes")
    nbytes = out.shape[0] - _AES_BLOCK
    key = hashlib.sha256(b"tecc-corr-key-v1/" + seed).digest()[:16]
    ctr = hashlib.sha256(b"tecc-corr-ctr-v1/" + label).digest()[:16]
    enc = Cipher(algorithms.AES(key), modes.CTR(ctr)).encryptor()
    step = len(_ZEROS)
    for off in range(0, nbytes, step):
        k = min(step, nbytes - off)
        enc.update_into(memoryview(_ZEROS)[:k], out[off : off + k + _AES_BLOCK - 1].data)


def expand_fields(kind: Kind, seed: bytes, count: int, *, derived: bool) -> dict[str, AnyArray]:
    """Expand the random (or derived) fields of ``count`` correlations from ``seed``."""
    return combined_fields(kind, [seed], count, derived=derived)


def xor_shared(kind: Kind, f: Field) -> bool:
    """Whether field ``f`` of ``kind`` is XOR-shared (else additively shared mod 2^64)."""
    return kind in (Kind.DABIT, Kind.CMP, Kind.CMP_SELECT) and not (
        f.derived and f.dtype == np.uint64
    )


def combined_fields(
    kind: Kind, seeds: list[bytes], count: int, *, derived: bool
) -> dict[str, AnyArray]:
    """The random (or derived) fields of ``count`` correlations summed (or XORed, per
    :func:`xor_shared`) over the parties of ``seeds``: what they reconstruct to.

    One pass: the first seed's keystream is the accumulator, every further one
    is written into one reused scratch buffer and added in place, so N seeds
    cost N keystreams and N − 1 in-place passes, and no per-party arrays.
    """
    segs, total = _segments(kind, derived, count)
    if not segs:
        return {}
    label = f"{kind.value}/{'derived' if derived else 'random'}".encode()
    stream = keystream(seeds[0], total, label)
    scratch = np.empty(total + _AES_BLOCK, dtype=np.uint8) if len(seeds) > 1 else stream
    out: dict[str, AnyArray] = {}
    for f, off in segs:
        out[f.name] = stream[off : off + f.itemsize * count].view(f.dtype)
    for seed in seeds[1:]:
        keystream_into(seed, label, scratch)
        for f, off in segs:
            other = scratch[off : off + f.itemsize * count].view(f.dtype)
            (np.bitwise_xor if xor_shared(kind, f) else np.add)(out[f.name], other, out=out[f.name])
    for f, _ in segs:
        if f.bits < 8:
            out[f.name] &= np.uint8((1 << f.bits) - 1)
    return out


def correction_fields(kind: Kind) -> tuple[Field, ...]:
    """The derived fields, in wire order: what party 0 receives explicitly."""
    return tuple(f for f in LAYOUTS[kind] if f.derived)


@dataclass(frozen=True, slots=True)
class Plan:
    """How many correlations of each kind one dealer batch holds."""

    triples: int = 0
    truncs: int = 0
    dabits: int = 0
    comparisons: int = 0
    squares: int = 0
    compare_selects: int = 0

    def __post_init__(self) -> None:
        for name in ("triples", "truncs", "dabits", "comparisons", "squares", "compare_selects"):
            if getattr(self, name) < 0:
                raise CorrelationError(f"plan count {name} must be >= 0")

    def counts(self) -> dict[Kind, int]:
        """Non-zero counts keyed by kind."""
        all_counts = {
            Kind.TRIPLE: self.triples,
            Kind.TRUNC: self.truncs,
            Kind.DABIT: self.dabits,
            Kind.CMP: self.comparisons,
            Kind.SQUARE: self.squares,
            Kind.CMP_SELECT: self.compare_selects,
        }
        return {k: v for k, v in all_counts.items() if v}


@dataclass(frozen=True, slots=True)
class Bundle:
    """One party's share of one batch of one kind: a seed, plus corrections for party 0."""

    kind: Kind
    party: int
    count: int
    frac_bits: int
    seed: bytes
    corrections: dict[str, AnyArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.seed) != prg.SEED_BYTES:
            raise CorrelationError(f"bundle seed must be {prg.SEED_BYTES} bytes")
        want = {f.name for f in correction_fields(self.kind)} if self.party == 0 else set()
        if set(self.corrections) != want:
            raise CorrelationError(
                f"{self.kind} bundle for party {self.party} must carry corrections {sorted(want)}"
            )
        for f in correction_fields(self.kind) if self.party == 0 else ():
            arr = self.corrections[f.name]
            if arr.dtype != f.dtype or arr.shape != (self.count,):
                raise CorrelationError(f"correction {f.name} has wrong dtype or length")


@dataclass(slots=True)
class Batch:
    """Materialised correlations of one kind for one party: field name → array.

    A slice remembers the batch it views (``base``, ``start``), so that
    :func:`concat` of consecutive slices of one batch is again a view.
    """

    kind: Kind
    count: int
    fields: dict[str, AnyArray]
    base: Batch | None = None
    start: int = 0

    def slice(self, start: int, stop: int) -> Batch:
        """A view of correlations ``start..stop`` (no copy)."""
        fields = {k: v[start:stop] for k, v in self.fields.items()}
        base = self.base if self.base is not None else self
        return Batch(self.kind, stop - start, fields, base, self.start + start)


def materialise(bundle: Bundle) -> Batch:
    """Expand a bundle into the arrays the protocol consumes (the offline work of a party)."""
    fields = expand_fields(bundle.kind, bundle.seed, bundle.count, derived=False)
    if bundle.party == 0:
        fields.update(bundle.corrections)
    else:
        fields.update(expand_fields(bundle.kind, bundle.seed, bundle.count, derived=True))
    return Batch(bundle.kind, bundle.count, fields)


def _fill(kind: Kind, derived: bool, bundles: list[Bundle], out: dict[str, AnyArray]) -> None:
    """Write every bundle's keystream segments straight into the joined field arrays."""
    label = f"{kind.value}/{'derived' if derived else 'random'}".encode()
    ctr = hashlib.sha256(b"tecc-corr-ctr-v1/" + label).digest()[:16]
    scratch = np.empty(8 + _AES_BLOCK, dtype=np.uint8)
    pos = 0
    for b in bundles:
        key = hashlib.sha256(b"tecc-corr-key-v1/" + b.seed).digest()[:16]
        enc = Cipher(algorithms.AES(key), modes.CTR(ctr)).encryptor()
        for f, _ in _segments(kind, derived, b.count)[0]:
            dst = out[f.name].view(np.uint8)
            lo, nb = pos * f.itemsize, b.count * f.itemsize
            for off in range(0, nb, len(_ZEROS)):
                k = min(len(_ZEROS), nb - off)
                span = dst[lo + off : lo + off + k + _AES_BLOCK - 1].data
                enc.update_into(memoryview(_ZEROS)[:k], span)
            if pad := -nb % 8:  # segments start 8-byte aligned in the keystream
                enc.update_into(memoryview(_ZEROS)[:pad], scratch.data)
        pos += b.count


def materialise_many(bundles: list[Bundle]) -> Batch:
    """Expand consecutive bundles of one kind into one batch, equal to joining their
    :func:`materialise` results but without the joining copy (the keystream is
    written in place)."""
    kind, party = bundles[0].kind, bundles[0].party
    if any(b.kind is not kind or b.party != party for b in bundles):
        raise CorrelationError("materialise_many needs bundles of one kind and party")
    total = sum(b.count for b in bundles)
    # _AES_BLOCK spare bytes per field: update_into wants room for a whole block.
    raw = {f.name: np.empty(total * f.itemsize + _AES_BLOCK, dtype=np.uint8) for f in LAYOUTS[kind]}
    out = {f.name: raw[f.name][: total * f.itemsize].view(f.dtype) for f in LAYOUTS[kind]}
    _fill(kind, False, bundles, raw)
    if party == 0:
        for f in correction_fields(kind):
            np.concatenate([b.corrections[f.name] for b in bundles], out=out[f.name])
    else:
        _fill(kind, True, bundles, raw)
    for f in LAYOUTS[kind]:
        if f.bits < 8:
            out[f.name] &= np.uint8((1 << f.bits) - 1)
    return Batch(kind, total, out)


def concat(batches: list[Batch]) -> Batch:
    """Join batches of one kind into one: a view if they are consecutive slices of one batch."""
    base, start = batches[0].base, batches[0].start
    if base is not None:
        stop = start
        for b in batches:
            if b.base is not base or b.start != stop:
                break
            stop += b.count
        else:
            return base.slice(start, stop)
    kind = batches[0].kind
    names = batches[0].fields.keys()
    fields = {k: np.concatenate([b.fields[k] for b in batches]) for k in names}
    return Batch(kind, sum(b.count for b in batches), fields)
