"""Typed views of correlation batches: one frozen record per kind, fields as attributes.

A :class:`~cloud_tecc.mpc.correlations.Batch` stores its arrays by field name
(the generic code — expansion, slicing, joining, the wire format — walks the
layout in :data:`~cloud_tecc.mpc.correlations.LAYOUTS`). The protocol steps
read them through these records instead, so mypy checks every field they
use. ``of(batch)`` picks the arrays out of the batch: the attributes are the
batch's own arrays (no copy), and the string keys of the layout appear only
here. The dealer reads the reconstructed random fields and the other
parties' derived shares through the same records (``from_fields``) and
hands back party 0's corrections with ``derived()``.
``tests/mpc/test_mpc_wire.py`` checks that each record covers exactly
its kind's layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cloud_tecc.mpc.bits import U8
from cloud_tecc.mpc.correlations import (
    CMP_LEVELS,
    FIRST_LANES,
    FUSED,
    PRODUCTS,
    AnyArray,
    Batch,
    Kind,
)
from cloud_tecc.mpc.errors import CorrelationError
from tecc_contract.ring import RingArray

Fields = Mapping[str, AnyArray]


def _fields(batch: Batch, kind: Kind) -> dict[str, AnyArray]:
    if batch.kind is not kind:
        raise CorrelationError(f"a {kind} batch was expected, got {batch.kind}")
    return batch.fields


@dataclass(frozen=True, slots=True)
class Triples:
    """Beaver triples: shares of random ``a``, ``b`` and of ``c = a·b``."""

    a: RingArray
    b: RingArray
    c: RingArray

    @classmethod
    def of(cls, batch: Batch) -> Triples:
        """The triples of a :attr:`Kind.TRIPLE` batch (views of its arrays)."""
        return cls.from_fields(_fields(batch, Kind.TRIPLE))

    @classmethod
    def from_fields(cls, f: Fields) -> Triples:
        """The record over a :attr:`Kind.TRIPLE` field mapping."""
        return cls(a=f["a"], b=f["b"], c=f["c"])

    def derived(self) -> dict[str, AnyArray]:
        """The derived fields by layout name (the dealer's corrections)."""
        return {"c": self.c}


@dataclass(frozen=True, slots=True)
class Squares:
    """Square pairs: shares of random ``a`` and of ``aa = a²`` (a Beaver triple with b = a)."""

    a: RingArray
    aa: RingArray

    @classmethod
    def of(cls, batch: Batch) -> Squares:
        """The pairs of a :attr:`Kind.SQUARE` batch (views of its arrays)."""
        return cls.from_fields(_fields(batch, Kind.SQUARE))

    @classmethod
    def from_fields(cls, f: Fields) -> Squares:
        """The record over a :attr:`Kind.SQUARE` field mapping."""
        return cls(a=f["a"], aa=f["aa"])

    def derived(self) -> dict[str, AnyArray]:
        """The derived fields by layout name (the dealer's corrections)."""
        return {"aa": self.aa}


@dataclass(frozen=True, slots=True)
class TruncPairs:
    """Truncation pairs: shares of random ``r``, of ``msb(r)`` and of ``(r mod 2^63) >> f``."""

    r: RingArray
    r_msb: RingArray
    r_low_shifted: RingArray

    @classmethod
    def of(cls, batch: Batch) -> TruncPairs:
        """The pairs of a :attr:`Kind.TRUNC` batch (views of its arrays)."""
        return cls.from_fields(_fields(batch, Kind.TRUNC))

    @classmethod
    def from_fields(cls, f: Fields) -> TruncPairs:
        """The record over a :attr:`Kind.TRUNC` field mapping."""
        return cls(r=f["r"], r_msb=f["r_msb"], r_low_shifted=f["r_t"])

    def derived(self) -> dict[str, AnyArray]:
        """The derived fields by layout name (the dealer's corrections)."""
        return {"r_msb": self.r_msb, "r_t": self.r_low_shifted}


@dataclass(frozen=True, slots=True)
class DaBits:
    """daBits: one random bit, XOR-shared (``bit_xor``) and arithmetic-shared (``bit_arith``)."""

    bit_xor: U8
    bit_arith: RingArray

    @classmethod
    def of(cls, batch: Batch) -> DaBits:
        """The daBits of a :attr:`Kind.DABIT` batch (views of its arrays)."""
        return cls.from_fields(_fields(batch, Kind.DABIT))

    @classmethod
    def from_fields(cls, f: Fields) -> DaBits:
        """The record over a :attr:`Kind.DABIT` field mapping."""
        return cls(bit_xor=f["b_bool"], bit_arith=f["b_arith"])

    def derived(self) -> dict[str, AnyArray]:
        """The derived fields by layout name (the dealer's corrections)."""
        return {"b_arith": self.bit_arith}


@dataclass(frozen=True, slots=True)
class AndLevel:
    """The XOR-shared AND triples of one prefix-tree level of ``lanes`` lanes per element.

    ``c = a ∧ b`` and ``cp = a ∧ bp``: the two ANDs of the level share the mask ``a``.
    """

    lanes: int
    a: AnyArray
    b: AnyArray
    bp: AnyArray
    c: AnyArray
    cp: AnyArray


@dataclass(frozen=True, slots=True)
class FusedLevel:
    """The fused last level: XOR mask bits α, β, γ and arithmetic shares derived from them.

    ``m_a = α``, ``m_b = β(1−2α)``, ``m_c = γ(1−2α)``, ``m_bc = βγ(1−2α)``
    (:func:`cloud_tecc.mpc.compare._fused_last`).
    """

    alpha: U8
    beta: U8
    gamma: U8
    m_a: RingArray
    m_b: RingArray
    m_c: RingArray
    m_bc: RingArray


@dataclass(frozen=True, slots=True)
class Comparisons:
    """Comparison correlations: an edaBit ``r`` (XOR bits, bit-reversed, and arithmetic),
    XOR shares of ``r_hi ∧ r_lo`` for the local first level (``r_pairs``, one uint32
    per element: the high and low halves of ``r_bits`` lane by lane), one
    :class:`AndLevel` per entry of :data:`CMP_LEVELS`, and the fused last level."""

    r_bits: RingArray
    r_arith: RingArray
    r_pairs: AnyArray
    levels: tuple[AndLevel, ...]
    fused: FusedLevel

    @classmethod
    def of(cls, batch: Batch) -> Comparisons:
        """The comparison correlations of a :attr:`Kind.CMP` batch (views of its arrays)."""
        return cls.from_fields(_fields(batch, Kind.CMP))

    @classmethod
    def from_fields(cls, f: Fields) -> Comparisons:
        """The record over a :attr:`Kind.CMP` field mapping."""
        levels = tuple(
            AndLevel(h, f[f"a{h}"], f[f"b{h}"], f[f"bp{h}"], f[f"c{h}"], f[f"cp{h}"])
            for h in CMP_LEVELS
        )
        m_a, m_b, m_c, m_bc = (f[f"m_{nm}"] for nm in FUSED)
        fused = FusedLevel(f["fa"], f["fb"], f["fc"], m_a, m_b, m_c, m_bc)
        return cls(
            r_bits=f["r_bool"],
            r_arith=f["r_arith"],
            r_pairs=f[f"q{FIRST_LANES}"],
            levels=levels,
            fused=fused,
        )

    def derived(self) -> dict[str, AnyArray]:
        """The derived fields by layout name (the dealer's corrections)."""
        out: dict[str, AnyArray] = {"r_arith": self.r_arith, f"q{FIRST_LANES}": self.r_pairs}
        for lv in self.levels:
            out[f"c{lv.lanes}"], out[f"cp{lv.lanes}"] = lv.c, lv.cp
        fu = self.fused
        out |= {"m_a": fu.m_a, "m_b": fu.m_b, "m_c": fu.m_c, "m_bc": fu.m_bc}
        return out


@dataclass(frozen=True, slots=True)
class CompareSelects:
    """A comparison's correlations (``cmp``) and shares of each fused-level value times the
    edaBit ``r``: ``p_a = m_a·r``, ``p_b = m_b·r``, ``p_c = m_c·r``, ``p_bc = m_bc·r``.

    With them the comparison's output bit ``b`` times its own input ``x`` is local
    after the last round (:func:`cloud_tecc.mpc.compare.msb_times`)."""

    cmp: Comparisons
    p_a: RingArray
    p_b: RingArray
    p_c: RingArray
    p_bc: RingArray

    @classmethod
    def of(cls, batch: Batch) -> CompareSelects:
        """The correlations of a :attr:`Kind.CMP_SELECT` batch (views of its arrays)."""
        return cls.from_fields(_fields(batch, Kind.CMP_SELECT))

    @classmethod
    def from_fields(cls, f: Fields) -> CompareSelects:
        """The record over a :attr:`Kind.CMP_SELECT` field mapping."""
        p_a, p_b, p_c, p_bc = (f[name] for name in PRODUCTS)
        return cls(Comparisons.from_fields(f), p_a, p_b, p_c, p_bc)

    def derived(self) -> dict[str, AnyArray]:
        """The derived fields by layout name (the dealer's corrections)."""
        products = (self.p_a, self.p_b, self.p_c, self.p_bc)
        return self.cmp.derived() | dict(zip(PRODUCTS, products, strict=True))
