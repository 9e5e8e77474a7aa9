"""Exact segmented min and max of every window at once, written against :class:`Ops`.

The first level compares the pairs ``(x_2k, x_2k+1)`` of every window once and
splits them into the smaller and the larger halves (``[a < b]`` comes from the
caller's batched comparison round); the min tree then runs on the smaller
halves and the max tree on the larger ones, about ``3n/2`` comparisons in all.

The next :data:`BINARY_LEVELS` levels are binary: one comparison per pair
whose output bit times its input is the select (:meth:`Ops.ltz_times`: no
product round, 6 rounds), min and max trees in the same rounds. They leave
about an eighth of the readings (``⌈len/16⌉`` per tree and segment); the
levels after them reduce groups of four instead: all six pairwise comparisons
of a group in one comparison round, then the winner's value ``Σ_i w_i·x_i``
with ``w_i`` the product of the three bits that say ``x_i`` precedes the
others in the order (value, position), in two product rounds — 8 rounds per
factor 4 instead of 12, for about 0.2 extra comparisons per reading. The max
tree runs as a min tree on negated values.

Why a number of levels and not a size: the split between the two kinds of
level then depends on the segments' lengths only, not on how many readings an
epoch has, so each kind of correlation (comparisons with select for binary
levels, comparisons and products for four-way ones) is used at about the same
rate per reading by an epoch of any size. A dealer batch is planned per
reading (:func:`cloud_tecc.dealer.plan.plan_for`) and is used up evenly by
epochs smaller than it — a shard's epoch is 1/K of the party's. With a size
threshold (four-way once both trees held at most 8,192 elements) an epoch of
10,000 readings used 84 % of a 20,000-reading batch's products, so every such
epoch fetched a whole batch and the other kinds of half of it were dropped
unused.

Short groups are padded with the public constant ``±PAD`` (beyond every value
``|x| < 2^62``), which never wins. Every step is exact.

This is the one segmented min/max: the analytics program batches the first
level's comparison into its shared comparison round (:func:`segment_minmax`);
:func:`segment_min_max` runs it standalone on any :class:`Ops` (plaintext or
shares, e.g. :class:`~cloud_tecc.analytics.secure.MpcOps` over a ``Party``).
"""

from __future__ import annotations

import numpy as np

from cloud_tecc.analytics.ops import Ops
from cloud_tecc.analytics.plan import IntArray, segment_pairs
from tecc_contract.ring import RingArray

_U64 = np.uint64
#: Binary levels after the first; the rest reduce by four (fewer rounds).
BINARY_LEVELS = 3
#: Padding of short groups: above every value a comparison accepts (|x| < 2^62).
PAD = (1 << 62) - 1
#: Pairs (i, j), i < j, of a group of four, in comparison order.
_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def max_selects(readings: int) -> int:
    """The most comparisons with select (:meth:`Ops.ltz_times` elements) any epoch of
    ``readings`` min/max readings takes: ``⌊n/2⌋`` in the first level of a stream of n,
    at most ``2(⌈n/2⌉ − 1)`` in the binary levels of its two trees, so ≤ 1.5 per reading.

    How many selects the binary levels take depends on the segments' lengths (a
    stream shorter than a dry run's has fewer of its levels binary), so a dry run of
    other shapes could under-count; the dealer plans this bound instead.
    """
    return (3 * readings + 1) // 2


def max_products(readings: int) -> int:
    """The most products (Beaver triples) the four-way levels of any epoch of ``readings``
    min/max readings take: ``⌈3n/2⌉``.

    A window of L readings reaches them with ``m = ⌈L/16⌉ ≥ 2`` elements per tree (the
    first level and :data:`BINARY_LEVELS` binary ones come before); each group of four
    costs 12 products per tree, and the groups of all its four-way levels number at most
    ``(2/3)·m + 1``, so a window takes at most ``24·((2/3)·m + 1) ≤ 1.5·L`` products
    (the most per reading at L = 17: 24). A dry run of other window lengths can use far
    fewer, none at all if its windows never reach a four-way level, so the dealer plans
    this bound: triples are the cheapest kind (8 bytes to party 0), and a kind the plan
    lacks ends every MPC session.
    """
    return (3 * readings + 1) // 2


def _cat(parts: list[RingArray]) -> RingArray:
    return np.concatenate(parts).astype(_U64, copy=False)


async def _min4(ops: Ops, v: RingArray, lengths: IntArray) -> tuple[RingArray, IntArray]:
    """One four-way level of a segmented min: 8 rounds; returns values and new lengths."""
    groups = -(-lengths // 4)
    off = np.cumsum(lengths) - lengths
    seg = np.repeat(np.arange(len(lengths)), groups)
    first = np.cumsum(groups) - groups
    k = np.arange(int(groups.sum())) - np.repeat(first, groups)
    lane = 4 * k[:, None] + np.arange(4)
    valid = lane < lengths[seg][:, None]
    pos = np.where(valid, off[seg][:, None] + lane, 0)
    pad = ops.public(np.full(pos.size, PAD, dtype=_U64)).reshape(pos.shape)
    x = np.where(valid, v[pos], pad)
    # s[(i, j)] = [x_j < x_i]; x_i wins iff it precedes every other in (value, lane) order.
    bits = await ops.ltz(_cat([x[:, j] - x[:, i] for i, j in _PAIRS]))
    g = len(k)
    s = {pair: bits[n * g : (n + 1) * g] for n, pair in enumerate(_PAIRS)}
    one = ops.public(np.ones(g, dtype=_U64))
    terms = [
        [one - s[(0, 1)], one - s[(0, 2)], one - s[(0, 3)]],
        [s[(0, 1)], one - s[(1, 2)], one - s[(1, 3)]],
        [s[(0, 2)], s[(1, 2)], one - s[(2, 3)]],
        [s[(0, 3)], s[(1, 3)], s[(2, 3)]],
    ]
    left = _cat([t[0] for t in terms] + [t[2] for t in terms])
    right = _cat([t[1] for t in terms] + [x[:, i] for i in range(4)])
    half = await ops.mul(left, right)
    w = await ops.mul(half[: 4 * g], half[4 * g :])
    return w.reshape(4, g).sum(axis=0, dtype=_U64), groups


async def _min2(
    ops: Ops, vmin: RingArray, vmax: RingArray, lengths: IntArray
) -> tuple[RingArray, RingArray]:
    """One binary level of the min and the max tree together: 6 rounds.

    ``t = [d < 0]·d`` for ``d = l − r`` of the min tree (``r − l`` of the max
    tree) is the select: ``min = r + t``, ``max = r − t``.
    """
    left, right, dest, c_src, c_dst = segment_pairs(lengths)
    none = np.zeros(0, _U64)
    _, _, t = await ops.ltz_times(none, _cat([vmin[left] - vmin[right], vmax[right] - vmax[left]]))
    k = len(left)
    size = int((lengths // 2 + lengths % 2).sum())
    nmin, nmax = np.zeros(size, _U64), np.zeros(size, _U64)
    nmin[dest] = vmin[right] + t[:k]
    nmax[dest] = vmax[right] - t[k:]
    nmin[c_dst], nmax[c_dst] = vmin[c_src], vmax[c_src]
    return nmin, nmax


async def segment_minmax(
    ops: Ops,
    xm: RingArray,
    lengths: IntArray,
    t: RingArray,
    level: tuple[IntArray, IntArray, IntArray, IntArray, IntArray],
) -> tuple[RingArray, RingArray]:
    """Min and max of each segment of ``xm``; ``t`` holds the first level's selects
    ``[a < b]·(a − b)`` for the pairs ``(a, b)`` of ``level`` (:meth:`Ops.ltz_times`).

    ``level`` is :func:`~cloud_tecc.analytics.plan.segment_pairs` of ``lengths``.
    """
    if not len(lengths):
        return np.zeros(0, _U64), np.zeros(0, _U64)
    left, right, dest, c_src, c_dst = level
    a, b = xm[left], xm[right]
    size = int((lengths // 2 + lengths % 2).sum())
    vmin, vmax = np.zeros(size, _U64), np.zeros(size, _U64)
    vmin[dest] = b + t
    vmax[dest] = a - t
    vmin[c_dst] = xm[c_src]
    vmax[c_dst] = xm[c_src]
    lengths = lengths // 2 + lengths % 2
    binary = BINARY_LEVELS
    while int(lengths.max()) > 1:
        if binary:
            binary -= 1
            vmin, vmax = await _min2(ops, vmin, vmax, lengths)
            lengths = lengths // 2 + lengths % 2
            continue
        both, new = await _min4(ops, _cat([vmin, _U64(0) - vmax]), np.concatenate([lengths] * 2))
        n = int(new[: len(lengths)].sum())
        vmin, vmax, lengths = both[:n], _U64(0) - both[n:], new[: len(lengths)]
    return vmin, vmax


async def segment_min_max(ops: Ops, x: RingArray, lengths: IntArray) -> tuple[RingArray, RingArray]:
    """Min and max of each contiguous segment of ``x`` (public ``lengths`` >= 1).

    Requires |x| < 2^62. The first level's comparison runs here (6 rounds);
    inside a larger program prefer :func:`segment_minmax` and batch it.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 1).any() or int(lengths.sum()) != len(x):
        raise ValueError("segment lengths must be >= 1 and add up to the number of elements")
    level = segment_pairs(lengths)
    left, right = level[0], level[1]
    none = np.zeros(0, _U64)
    _, _, t = await ops.ltz_times(none, _cat([x[left] - x[right]])) if len(left) else (none,) * 3
    return await segment_minmax(ops, x, lengths, t, level)
