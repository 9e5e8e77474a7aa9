"""Select (mux), elementwise min/max and tree min/max over segments.

``select(s, x, y) = y + s·(x − y)`` for an arithmetic 0/1 share ``s``: one
Beaver round. ``min(x, y) = select([x < y], x, y)``: 7 + 1 rounds. Tree min over
the last axis of an ``(m, k)`` array halves ``k`` per level, all ``m`` rows in
the same rounds: ``8·⌈log2 k⌉`` rounds.
"""

from __future__ import annotations

import numpy as np

from cloud_tecc.mpc.arith import mul
from cloud_tecc.mpc.compare import lt
from cloud_tecc.mpc.protocol import Ctx, Proto
from cloud_tecc.mpc.tuples import Comparisons, Triples
from tecc_contract.ring import RingArray


def select(ctx: Ctx, s: RingArray, x: RingArray, y: RingArray, t: Triples) -> Proto[RingArray]:
    """Share of ``x`` where the bit ``s`` is 1, else ``y``; one round."""
    z = yield from mul(ctx, s, x - y, t)
    z += y
    return z


def minimum(ctx: Ctx, x: RingArray, y: RingArray, cb: Comparisons, t: Triples) -> Proto[RingArray]:
    """Elementwise minimum, 8 rounds."""
    s = yield from lt(ctx, x, y, cb)
    return (yield from select(ctx, s, x, y, t))


def maximum(ctx: Ctx, x: RingArray, y: RingArray, cb: Comparisons, t: Triples) -> Proto[RingArray]:
    """Elementwise maximum, 8 rounds."""
    s = yield from lt(ctx, x, y, cb)
    return (yield from select(ctx, s, y, x, t))


def tree_pair_counts(m: int, k: int) -> list[int]:
    """Comparisons (and triples) each level of a tree reduction of ``(m, k)`` needs."""
    counts = []
    while k > 1:
        counts.append(m * (k // 2))
        k -= k // 2
    return counts


def tree_reduce(
    ctx: Ctx, x: RingArray, levels: list[tuple[Comparisons, Triples]], *, want_max: bool
) -> Proto[RingArray]:
    """Min (or max) over the last axis of a 2-D ``(m, k)`` share array → ``(m,)``.

    ``levels[j]`` is the (comparison, triple) batch pair for level ``j``, sized
    by :func:`tree_pair_counts`.
    """
    cur = np.ascontiguousarray(x)
    op = maximum if want_max else minimum
    for cb, t in levels:
        k = cur.shape[1]
        half = k // 2
        lo = np.ascontiguousarray(cur[:, 0 : 2 * half : 2]).reshape(-1)
        hi = np.ascontiguousarray(cur[:, 1 : 2 * half : 2]).reshape(-1)
        red = (yield from op(ctx, lo, hi, cb, t)).reshape(cur.shape[0], half)
        cur = np.concatenate([red, cur[:, 2 * half :]], axis=1) if k % 2 else red
    return cur[:, 0].copy()
