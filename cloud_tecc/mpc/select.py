"""Select (mux), elementwise min/max and tree min/max over segments.

``select(s, x, y) = y + s·(x − y)`` for an arithmetic 0/1 share ``s``: one
Beaver round. ``min(x, y) = select([x < y], x, y)``: 7 + 1 rounds. Tree min over
the last axis of an ``(m, k)`` array halves ``k`` per level, all ``m`` rows in
the same rounds: ``8·⌈log2 k⌉`` rounds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cloud_tecc.mpc.arith import mul
from cloud_tecc.mpc.compare import lt
from cloud_tecc.mpc.correlations import Batch
from cloud_tecc.mpc.errors import MpcParameterError
from cloud_tecc.mpc.protocol import Ctx, Proto
from tecc_contract.ring import RingArray


def select(ctx: Ctx, s: RingArray, x: RingArray, y: RingArray, t: Batch) -> Proto[RingArray]:
    """Share of ``x`` where the bit ``s`` is 1, else ``y``; one round."""
    z = yield from mul(ctx, s, x - y, t)
    z += y
    return z


def minimum(ctx: Ctx, x: RingArray, y: RingArray, cb: Batch, t: Batch) -> Proto[RingArray]:
    """Elementwise minimum, 8 rounds."""
    s = yield from lt(ctx, x, y, cb)
    return (yield from select(ctx, s, x, y, t))


def maximum(ctx: Ctx, x: RingArray, y: RingArray, cb: Batch, t: Batch) -> Proto[RingArray]:
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
    ctx: Ctx, x: RingArray, levels: list[tuple[Batch, Batch]], *, want_max: bool
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


#: Padding for ragged segments: beyond every value the engine's comparisons accept
#: (|x| < 2^62), so it never wins a min (or, negated, a max).
SEGMENT_PAD = (1 << 62) - 1


def segment_grid(ctx: Ctx, x: RingArray, counts: npt.ArrayLike, *, want_max: bool) -> RingArray:
    """Lay ragged segments (public ``counts``) out as rows of an ``(m, max count)`` grid.

    Missing cells hold a share of the public padding (``+SEGMENT_PAD`` for min,
    ``−SEGMENT_PAD`` for max), so a row's min/max is its segment's.
    """
    c = np.asarray(counts, dtype=np.int64).reshape(-1)
    if c.size == 0 or (c < 1).any() or int(c.sum()) != x.shape[0]:
        raise MpcParameterError("segment counts must be >= 1 and add up to the number of elements")
    pad = np.uint64(0)
    if ctx.leader:
        pad = np.int64(-SEGMENT_PAD if want_max else SEGMENT_PAD).astype(np.uint64)
    grid = np.full((c.size, int(c.max())), pad, dtype=np.uint64)
    starts = np.cumsum(c) - c
    rows = np.repeat(np.arange(c.size), c)
    cols = np.arange(x.shape[0]) - np.repeat(starts, c)
    grid[rows, cols] = x
    return grid
