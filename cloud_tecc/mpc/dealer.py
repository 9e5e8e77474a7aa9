"""The sans-IO dealer: from a plan, fresh seeds and nothing else, to per-party bundles.

The dealer never sees a share of a party's input or an opened value; it only
draws correlated randomness. For each kind in the plan it draws one seed per
party, expands every party's random fields exactly as the party will, computes
the value each relation requires (``c = a·b``, ``msb(r)``, products of mask
bits, …) and hands party 0 the correction that makes the shares add up. The
relations follow:

* Beaver triple: ``Σc = (Σa)(Σb)``.
* Truncation pair: ``Σr`` uniform, ``Σr_msb = msb(Σr)``, ``Σr_t = (Σr mod 2^63) >> f``.
* daBit: ``⊕b_bool = Σb_arith ∈ {0, 1}``.
* Comparison: ``r = bitrev(⊕r_bool) = Σr_arith``; per tree level
  ``⊕c = (⊕a) ∧ (⊕b)`` and ``⊕cp = (⊕a) ∧ (⊕bp)``; for the XOR-shared bits
  ``α = ⊕fa``, ``β = ⊕fb``, ``γ = ⊕fc`` arithmetic shares of α, β(1−2α),
  γ(1−2α) and βγ(1−2α).
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable

import numpy as np

from cloud_tecc.mpc.bits import bitrev64
from cloud_tecc.mpc.correlations import (
    CMP_LEVELS,
    AnyArray,
    Bundle,
    Kind,
    Plan,
    expand_fields,
)
from cloud_tecc.mpc.errors import MpcParameterError
from tecc_contract import prg
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.types import RandomBytes

Fields = dict[str, AnyArray]
_MASK63 = np.uint64((1 << 63) - 1)


def _xor(arrays: list[AnyArray]) -> AnyArray:
    return functools.reduce(operator.xor, arrays)


def _sum(arrays: list[AnyArray]) -> AnyArray:
    return functools.reduce(operator.add, arrays)


def _arith_corr(value: AnyArray, others: list[Fields], name: str) -> AnyArray:
    out = np.subtract(value, others[0][name], dtype=np.uint64)
    for o in others[1:]:
        out -= o[name]
    return out


def _bool_corr(value: AnyArray, others: list[Fields], name: str) -> AnyArray:
    out = value ^ others[0][name]
    for o in others[1:]:
        out ^= o[name]
    return out


def _triple(rnd: list[Fields], oth: list[Fields], _f: int) -> Fields:
    a = _sum([r["a"] for r in rnd])
    b = _sum([r["b"] for r in rnd])
    return {"c": _arith_corr(a * b, oth, "c")}


def _trunc(rnd: list[Fields], oth: list[Fields], frac_bits: int) -> Fields:
    r = _sum([x["r"] for x in rnd])
    msb = r >> np.uint64(63)
    rt = (r & _MASK63) >> np.uint64(frac_bits)
    return {"r_msb": _arith_corr(msb, oth, "r_msb"), "r_t": _arith_corr(rt, oth, "r_t")}


def _dabit(rnd: list[Fields], oth: list[Fields], _f: int) -> Fields:
    bit = _xor([x["b_bool"] for x in rnd]).astype(np.uint64)
    return {"b_arith": _arith_corr(bit, oth, "b_arith")}


def _cmp(rnd: list[Fields], oth: list[Fields], _f: int) -> Fields:
    out: Fields = {}
    r = bitrev64(_xor([x["r_bool"] for x in rnd]))
    out["r_arith"] = _arith_corr(r, oth, "r_arith")
    for h in CMP_LEVELS:
        a = _xor([x[f"a{h}"] for x in rnd])
        out[f"c{h}"] = _bool_corr(a & _xor([x[f"b{h}"] for x in rnd]), oth, f"c{h}")
        out[f"cp{h}"] = _bool_corr(a & _xor([x[f"bp{h}"] for x in rnd]), oth, f"cp{h}")
    al, be, ga = (_xor([x[nm] for x in rnd]).astype(np.uint64) for nm in ("fa", "fb", "fc"))
    sa = np.uint64(1) - (al << np.uint64(1))  # 1 − 2α ∈ {1, −1}
    fused = {"a": al, "b": be * sa, "c": ga * sa, "bc": (be & ga) * sa}
    for nm, val in fused.items():
        out[f"m_{nm}"] = _arith_corr(val, oth, f"m_{nm}")
    return out


_DERIVE: dict[Kind, Callable[[list[Fields], list[Fields], int], Fields]] = {
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
    rnd = [expand_fields(kind, s, count, derived=False) for s in seeds]
    oth = [expand_fields(kind, s, count, derived=True) for s in seeds[1:]]
    corrections = _DERIVE[kind](rnd, oth, frac_bits)
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
