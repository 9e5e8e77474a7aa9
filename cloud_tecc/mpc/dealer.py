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

import numpy as np

from cloud_tecc.mpc.bits import bitrev64
from cloud_tecc.mpc.correlations import (
    CMP_LEVELS,
    FIRST_LANES,
    AnyArray,
    Bundle,
    Kind,
    Plan,
    combined_fields,
)
from cloud_tecc.mpc.errors import MpcParameterError
from tecc_contract import prg
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.types import RandomBytes

Fields = dict[str, AnyArray]
_MASK63 = np.uint64((1 << 63) - 1)


def _arith_corr(value: AnyArray, oth: Fields, name: str) -> AnyArray:
    return np.subtract(value, oth[name], dtype=np.uint64)


def _bool_corr(value: AnyArray, oth: Fields, name: str) -> AnyArray:
    return np.bitwise_xor(value, oth[name], out=value)


def _triple(tot: Fields, oth: Fields, _f: int) -> Fields:
    return {"c": _arith_corr(tot["a"] * tot["b"], oth, "c")}


def _trunc(tot: Fields, oth: Fields, frac_bits: int) -> Fields:
    r = tot["r"]
    msb = r >> np.uint64(63)
    rt = (r & _MASK63) >> np.uint64(frac_bits)
    return {"r_msb": _arith_corr(msb, oth, "r_msb"), "r_t": _arith_corr(rt, oth, "r_t")}


def _dabit(tot: Fields, oth: Fields, _f: int) -> Fields:
    return {"b_arith": _arith_corr(tot["b_bool"].astype(np.uint64), oth, "b_arith")}


def _cmp(tot: Fields, oth: Fields, _f: int) -> Fields:
    out: Fields = {}
    out["r_arith"] = _arith_corr(bitrev64(tot["r_bool"]), oth, "r_arith")
    halves = tot["r_bool"].view(np.uint32)  # little-endian: the high half is the odd element
    q = f"q{FIRST_LANES}"
    out[q] = _bool_corr(halves[1::2] & halves[0::2], oth, q)
    for h in CMP_LEVELS:
        a = tot[f"a{h}"]
        out[f"c{h}"] = _bool_corr(a & tot[f"b{h}"], oth, f"c{h}")
        out[f"cp{h}"] = _bool_corr(a & tot[f"bp{h}"], oth, f"cp{h}")
    al, be, ga = (tot[nm].astype(np.uint64) for nm in ("fa", "fb", "fc"))
    sa = np.uint64(1) - (al << np.uint64(1))  # 1 − 2α ∈ {1, −1}
    fused = {"a": al, "b": be * sa, "c": ga * sa, "bc": (be & ga) * sa}
    for nm, val in fused.items():
        out[f"m_{nm}"] = _arith_corr(val, oth, f"m_{nm}")
    return out


_DERIVE: dict[Kind, Callable[[Fields, Fields, int], Fields]] = {
    Kind.TRIPLE: _triple,
    Kind.TRUNC: _trunc,
    Kind.DABIT: _dabit,
    Kind.CMP: _cmp,
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
