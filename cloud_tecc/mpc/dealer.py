"""The sans-IO dealer: from a plan, fresh seeds and nothing else, to per-party bundles.

The dealer never sees a share of a party's input or an opened value; it only
draws correlated randomness. For each kind in the plan it draws one seed per
party, expands every party's random fields exactly as the party will (summed,
or XORed, over the parties in one pass:
:func:`~cloud_tecc.mpc.correlations.combined_fields`), computes the value
each relation requires (``c = a·b``, ``msb(r)``, products of mask bits, …)
and hands party 0 the correction that makes the shares add up. The
relations follow:

* Beaver triple: ``Σc = (Σa)(Σb)``.
* Square pair: ``Σaa = (Σa)²``.
* Comparison with select: a comparison's relations, and ``Σp_· = (Σm_·)·r`` for
  each of the four fused-level values (``r`` the edaBit).
* Truncation pair: ``Σr`` uniform, ``Σr_msb = msb(Σr)``, ``Σr_t = (Σr mod 2^63) >> f``.
* daBit: ``⊕b_bool = Σb_arith ∈ {0, 1}``.
* Comparison: ``r = bitrev(⊕r_bool) = Σr_arith``; ``⊕q32 = r_hi ∧ r_lo`` (the
  high and low 32-bit halves of ``⊕r_bool``, lane by lane); per tree level
  ``⊕c = (⊕a) ∧ (⊕b)`` and ``⊕cp = (⊕a) ∧ (⊕bp)``; for the XOR-shared bits
  ``α = ⊕fa``, ``β = ⊕fb``, ``γ = ⊕fc`` arithmetic shares of α, β(1−2α),
  γ(1−2α) and βγ(1−2α).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from cloud_tecc.mpc.bits import bitrev64
from cloud_tecc.mpc.correlations import (
    AnyArray,
    Bundle,
    Kind,
    Plan,
    combined_fields,
)
from cloud_tecc.mpc.errors import MpcParameterError
from cloud_tecc.mpc.tuples import CompareSelects, Comparisons, DaBits, Squares, Triples, TruncPairs
from tecc_contract import prg
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.types import RandomBytes

Fields = dict[str, AnyArray]
_MASK63 = np.uint64((1 << 63) - 1)


def _arith_corr(value: AnyArray, others: AnyArray) -> AnyArray:
    """Party 0's share of ``value`` given the other parties' sum ``others``."""
    return np.subtract(value, others, dtype=np.uint64)


def _bool_corr(value: AnyArray, others: AnyArray) -> AnyArray:
    """Party 0's XOR share of ``value`` given the other parties' XOR ``others``."""
    return np.bitwise_xor(value, others, out=value)


# Each derivation reads ``tot`` (the random fields, reconstructed) and ``oth``
# (the derived fields, summed over parties 1..N−1) through the typed record of
# its kind (:mod:`cloud_tecc.mpc.tuples`) and returns party 0's corrections.


def _triple(tot: Fields, oth: Fields, _f: int) -> Fields:
    t = Triples.from_fields(tot | oth)
    return replace(t, c=_arith_corr(t.a * t.b, t.c)).derived()


def _square(tot: Fields, oth: Fields, _f: int) -> Fields:
    t = Squares.from_fields(tot | oth)
    return replace(t, aa=_arith_corr(t.a * t.a, t.aa)).derived()


def _trunc(tot: Fields, oth: Fields, frac_bits: int) -> Fields:
    t = TruncPairs.from_fields(tot | oth)
    msb = t.r >> np.uint64(63)
    low = (t.r & _MASK63) >> np.uint64(frac_bits)
    return replace(
        t,
        r_msb=_arith_corr(msb, t.r_msb),
        r_low_shifted=_arith_corr(low, t.r_low_shifted),
    ).derived()


def _dabit(tot: Fields, oth: Fields, _f: int) -> Fields:
    t = DaBits.from_fields(tot | oth)
    return replace(t, bit_arith=_arith_corr(t.bit_xor.astype(np.uint64), t.bit_arith)).derived()


def _fused_values(t: Comparisons) -> tuple[AnyArray, AnyArray, AnyArray, AnyArray]:
    """The true α, β(1−2α), γ(1−2α), βγ(1−2α) of the fused level (uint64)."""
    fu = t.fused
    al, be, ga = (v.astype(np.uint64) for v in (fu.alpha, fu.beta, fu.gamma))
    sa = np.uint64(1) - (al << np.uint64(1))  # 1 − 2α ∈ {1, −1}
    return al, be * sa, ga * sa, (be & ga) * sa


def _cmp_derive(t: Comparisons) -> tuple[Comparisons, AnyArray, tuple[AnyArray, ...]]:
    """Party 0's corrections of a comparison, and the true ``r`` and fused-level values."""
    levels = tuple(
        replace(lv, c=_bool_corr(lv.a & lv.b, lv.c), cp=_bool_corr(lv.a & lv.bp, lv.cp))
        for lv in t.levels
    )
    halves = t.r_bits.view(np.uint32)  # little-endian: the high half is the odd element
    r_pairs = _bool_corr(halves[1::2] & halves[0::2], t.r_pairs)
    fu = t.fused
    values = _fused_values(t)
    m_a, m_b, m_c, m_bc = values
    fused = replace(
        fu,
        m_a=_arith_corr(m_a, fu.m_a),
        m_b=_arith_corr(m_b, fu.m_b),
        m_c=_arith_corr(m_c, fu.m_c),
        m_bc=_arith_corr(m_bc, fu.m_bc),
    )
    r = bitrev64(t.r_bits)
    r_arith = _arith_corr(r, t.r_arith)
    out = replace(t, r_arith=r_arith, r_pairs=r_pairs, levels=levels, fused=fused)
    return out, r, values


def _cmp(tot: Fields, oth: Fields, _f: int) -> Fields:
    return _cmp_derive(Comparisons.from_fields(tot | oth))[0].derived()


def _cmp_select(tot: Fields, oth: Fields, _f: int) -> Fields:
    t = CompareSelects.from_fields(tot | oth)
    cmp, r, (m_a, m_b, m_c, m_bc) = _cmp_derive(t.cmp)
    return replace(
        t,
        cmp=cmp,
        p_a=_arith_corr(m_a * r, t.p_a),
        p_b=_arith_corr(m_b * r, t.p_b),
        p_c=_arith_corr(m_c * r, t.p_c),
        p_bc=_arith_corr(m_bc * r, t.p_bc),
    ).derived()


_DERIVE: dict[Kind, Callable[[Fields, Fields, int], Fields]] = {
    Kind.TRIPLE: _triple,
    Kind.TRUNC: _trunc,
    Kind.DABIT: _dabit,
    Kind.CMP: _cmp,
    Kind.SQUARE: _square,
    Kind.CMP_SELECT: _cmp_select,
}


def deal_kind(
    kind: Kind, count: int, n: int, frac_bits: int, random_bytes: RandomBytes = os.urandom
) -> list[Bundle]:
    """Produce the ``n`` bundles of ``count`` correlations of one kind."""
    if n < 2:
        raise MpcParameterError(f"the dealer serves at least 2 parties, got {n}")
    seeds = [random_bytes(prg.SEED_BYTES) for _ in range(n)]
    # The reconstructed random fields (all n seeds) and the derived shares of
    # parties 1..n-1, each accumulated in one pass over the seeds.
    tot = combined_fields(kind, seeds, count, derived=False)
    oth = combined_fields(kind, seeds[1:], count, derived=True)
    corrections = _DERIVE[kind](tot, oth, frac_bits)
    return [
        Bundle(kind, i, count, frac_bits, seeds[i], corrections if i == 0 else {}) for i in range(n)
    ]


def deal(
    plan: Plan,
    n: int,
    *,
    frac_bits: int = DEFAULT_FRAC_BITS,
    random_bytes: RandomBytes = os.urandom,
) -> list[list[Bundle]]:
    """Produce one batch for ``plan``: ``result[i]`` is party ``i``'s list of bundles.

    ``random_bytes`` must be a cryptographic source (``os.urandom``) in
    production; tests pass a deterministic one.
    """
    per_party: list[list[Bundle]] = [[] for _ in range(n)]
    for kind, count in plan.counts().items():
        for i, b in enumerate(deal_kind(kind, count, n, frac_bits, random_bytes)):
            per_party[i].append(b)
    return per_party
