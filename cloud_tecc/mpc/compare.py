"""Secure sign bit (MSB) and less-than: 6 rounds, an arithmetic 0/1 share out.

Round 1 opens ``c = x + r`` for a dealer edaBit ``r`` (arithmetic shares of
``r`` and XOR shares of its bits). Then ``x = c − r`` and
``msb(x) = c₆₃ ⊕ r₆₃ ⊕ B`` where ``B`` is the borrow out of the low 63 bits
of ``c − r``. With ``c`` public, the per-bit borrow *generate*
``g = ¬c ∧ r`` and *propagate* ``p = ¬(c ⊕ r)`` are local XOR shares. ``B``
is a log-depth reduction with ``(G, P)_hi ∘ (G, P)_lo = (G_hi ⊕ P_hi∧G_lo,
P_hi∧P_lo)`` (the terms of the OR are disjoint, so OR = XOR). Bit 63 is a
neutral slot ``(g, p) = (0, 1)``.

Bits are held in index bit-reversed order (bit i at position rev6(i); the
dealer's XOR shares of ``r`` are already in that order, ``c`` is permuted
locally), so each level pairs the high half of a
word with its low half: level ``h`` keeps ``h`` lanes per element in the
narrowest dtype, and the opened bits are packed densely — 3·h bits per element
per level (the two ANDs share the masked ``P_hi``). The first level (64 → 32
lanes) needs no round: with ``C = ¬c`` public, its outputs
``G = C_hi∧r_hi ⊕ C_hi∧C_lo∧r_lo ⊕ C_lo∧(r_hi∧r_lo)`` and
``P = C_hi∧C_lo ⊕ C_hi∧r_lo ⊕ C_lo∧r_hi ⊕ r_hi∧r_lo`` are linear in the bits of
``r`` and in ``r_hi ∧ r_lo``, which the dealer XOR-shares with the edaBit
(it draws ``r``, so it learns nothing new). Levels 16, 8, 4, 2 take
one round each; the last level (2 → 1 lanes) is fused with the bit-to-
arithmetic conversion: it opens ``u ⊕ α, v ⊕ β, w ⊕ γ`` for ``z = u ⊕ v∧w``
and evaluates ``z = u + v·w − 2·u·v·w`` as a public combination of four
dealer-shared values. Total 1 + 4 + 1 = 6 rounds, 8 + 11.6 bytes per element per peer.

:func:`msb_times` also returns ``b·x`` for the output bit ``b``, in the same
6 rounds and bytes: ``x = c − r`` with ``c`` opened, so ``b·x = c·b − b·r``,
and ``b·r`` is the same public combination of the dealer's ``m_·r`` (and
``r``) as ``b`` is of the ``m_·`` (:class:`~cloud_tecc.mpc.tuples.CompareSelects`).
A min/max select ``b·(x − y)`` after ``b = [x < y]`` needs no Beaver round.
"""

from __future__ import annotations

import numpy as np

from cloud_tecc.mpc.bits import U8, bitrev64
from cloud_tecc.mpc.correlations import CMP_LEVELS, AnyArray
from cloud_tecc.mpc.protocol import Ctx, Open, Proto, arith, as_ring, xor
from cloud_tecc.mpc.tuples import AndLevel, CompareSelects, Comparisons, FusedLevel
from tecc_contract.ring import RingArray

ROUNDS = 1 + len(CMP_LEVELS) + 1
_ONE = np.uint64(1)
_DTYPES = {32: np.uint32, 16: np.uint16, 8: np.uint8, 4: np.uint8, 2: np.uint8, 1: np.uint8}


def _halves(w: AnyArray, h: int) -> tuple[AnyArray, AnyArray]:
    """High and low ``h``-lane halves of each word (views when ``h`` is a whole dtype)."""
    dt = _DTYPES[h]
    if h >= 8:  # little-endian: the high half of each word is the odd narrow element
        narrow = w.view(dt)
        return narrow[1::2], narrow[0::2]
    hi = w >> np.uint8(h)
    lo = w & np.uint8((1 << h) - 1)
    return hi, lo


_LANE31 = np.uint32(1 << 31)
_BELOW31 = np.uint32((1 << 31) - 1)


def _first_level(
    ctx: Ctx, not_c: RingArray, r_bits: RingArray, q: AnyArray
) -> tuple[AnyArray, AnyArray]:
    """The local first level, 64 → 32 lanes: this party's XOR shares of ``(G, P)``.

    ``not_c`` is ``¬c`` (public, bit-reversed), ``r_bits`` this party's share of
    the bits of ``r`` and ``q`` of ``r_hi ∧ r_lo``; lane 31 pairs the neutral
    slot (position 63) with position 31, so there ``(G, P) = (g, p)`` of position 31.
    """
    ch, cl = _halves(not_c, 32)
    rh, rl = _halves(r_bits, 32)
    both = ch & cl
    g = ch & rh
    g ^= both & rl
    g ^= cl & q
    p = ch & rl
    p ^= cl & rh
    p ^= q
    if ctx.leader:
        p ^= both
    # lane 31: position 31 alone (the neutral slot passes it through)
    g_31: AnyArray = cl & rl & _LANE31
    p_31: AnyArray = (rl ^ cl if ctx.leader else rl) & _LANE31
    np.bitwise_and(g, _BELOW31, out=g)
    np.bitwise_or(g, g_31, out=g)
    np.bitwise_and(p, _BELOW31, out=p)
    np.bitwise_or(p, p_31, out=p)
    return g, p


def _level(ctx: Ctx, g: AnyArray, p: AnyArray, lv: AndLevel) -> Proto[tuple[AnyArray, AnyArray]]:
    """One prefix-tree level, 2h → h lanes, one round of two ANDs sharing ``P_hi``."""
    h = lv.lanes
    g_hi, g_lo = _halves(g, h)
    p_hi, p_lo = _halves(p, h)
    a, b, bp = lv.a, lv.b, lv.bp
    n = g.shape[0]
    buf = np.empty(3 * n, dtype=_DTYPES[h])
    np.bitwise_xor(p_hi, a, out=buf[:n])
    np.bitwise_xor(g_lo, b, out=buf[n : 2 * n])
    np.bitwise_xor(p_lo, bp, out=buf[2 * n :])
    parts = (xor(buf[:n], h), xor(buf[n : 2 * n], h), xor(buf[2 * n :], h))
    d, e, q = yield Open(parts, wire=buf.view(np.uint8) if h >= 8 else None)
    # z = c ⊕ d∧b ⊕ e∧a ⊕ [party 0] d∧e, with d∧b ⊕ d∧e = d∧(b ⊕ e) for party 0.
    if ctx.leader:
        z1 = d & (b ^ e)
        z2 = d & (bp ^ q)
    else:
        z1 = d & b
        z2 = d & bp
    z1 ^= lv.c
    z1 ^= e & a
    z1 ^= g_hi
    z2 ^= lv.cp
    z2 ^= q & a
    return z1, z2


def _fused_tables() -> tuple[RingArray, ...]:
    """Public coefficients of the fused level, indexed by ``4U + 2V + W``."""
    rows = []
    for idx in range(8):
        u, v, w = idx >> 2, (idx >> 1) & 1, idx & 1
        su, sv, sw = 1 - 2 * u, 1 - 2 * v, 1 - 2 * w
        t0 = v & w
        rows.append((su * (1 - 2 * t0), su * w * sv, su * v * sw, su * sv * sw, u ^ t0))
    return tuple(np.array(col, dtype=np.int64).view(np.uint64) for col in zip(*rows, strict=True))


#: Coefficients of m_a, m_b, m_c, m_bc and the constant (party 0), see :func:`_fused_last`.
_FUSED_TABLES = _fused_tables()


def _fused_last(ctx: Ctx, u: U8, v: U8, w: U8, f: FusedLevel) -> Proto[tuple[RingArray, AnyArray]]:
    """Arithmetic share of ``z = u ⊕ (v ∧ w)`` for XOR-shared bits, one round.

    Opens ``U = u⊕α, V = v⊕β, W = w⊕γ``. With ``u = U + (1−2U)α`` (and alike),
    ``z = u + vw − 2u·vw = (U ⊕ VW) + (1−2U)·[(1−2VW)·α + W(1−2V)·β(1−2α)
    + V(1−2W)·γ(1−2α) + (1−2V)(1−2W)·βγ(1−2α)]``; the dealer shares the four
    bracketed randoms, the coefficients are public table look-ups (``idx``,
    returned with the share).
    """
    ou, ov, ow = yield Open((xor(u ^ f.alpha, 1), xor(v ^ f.beta, 1), xor(w ^ f.gamma, 1)))
    idx = ou << np.uint8(2)
    idx |= ov << np.uint8(1)
    idx |= ow
    ca, cb, cc, cbc, const = _FUSED_TABLES
    z = ca[idx] * f.m_a
    z += cb[idx] * f.m_b
    z += cc[idx] * f.m_c
    z += cbc[idx] * f.m_bc
    if ctx.leader:
        z += const[idx]
    return as_ring(z), idx


def msb(ctx: Ctx, x: RingArray, cb: Comparisons) -> Proto[RingArray]:
    """Arithmetic 0/1 share of the sign bit of ``x`` (1 iff x < 0 as signed), 6 rounds."""
    z, _, _ = yield from _msb(ctx, x, cb)
    return z


def msb_times(
    ctx: Ctx, x: RingArray, cb: Comparisons, cs: CompareSelects
) -> Proto[tuple[RingArray, RingArray]]:
    """Shares of ``b = [x < 0]`` and, for the last ``k`` elements, of ``b·x``; 6 rounds.

    ``cb`` holds the comparison correlations of every element of ``x`` (those
    of the last ``k`` being ``cs.cmp``) and ``cs`` the ``k`` products ``m_·r``.
    """
    z, c, idx = yield from _msb(ctx, x, cb)
    k = cs.p_a.shape[0]
    tail = slice(z.shape[0] - k, None)
    ix = idx[tail]
    ca, cbb, cc, cbc, const = _FUSED_TABLES
    br = ca[ix] * cs.p_a
    br += cbb[ix] * cs.p_b
    br += cc[ix] * cs.p_c
    br += cbc[ix] * cs.p_bc
    br += const[ix] * cs.cmp.r_arith
    zx = c[tail] * z[tail]
    zx -= br
    return z, as_ring(zx)


def _msb(ctx: Ctx, x: RingArray, cb: Comparisons) -> Proto[tuple[RingArray, RingArray, AnyArray]]:
    """:func:`msb`'s share, the opened ``c = x + r`` and the fused level's table index."""
    (c,) = yield Open((arith(x + cb.r_arith),))
    not_c = bitrev64(c)
    np.invert(not_c, out=not_c)
    r_bool = cb.r_bits
    # Bit 63 sits at position rev6(63) = 63, the neutral element (g, p) = (0, 1):
    # lane 31 of the first level.
    g, p = _first_level(ctx, not_c, r_bool, cb.r_pairs)
    for lv in cb.levels:
        g, p = yield from _level(ctx, g, p, lv)
    u = (g >> np.uint8(1)) ^ (r_bool >> np.uint64(63)).astype(np.uint8)
    if ctx.leader:
        u ^= (c >> np.uint64(63)).astype(np.uint8)
    z, idx = yield from _fused_last(ctx, u, p >> np.uint8(1), g & np.uint8(1), cb.fused)
    return z, c, idx


def lt(ctx: Ctx, x: RingArray, y: RingArray, cb: Comparisons) -> Proto[RingArray]:
    """Share of ``[x < y]`` (signed), requires ``|x − y| < 2^63``; 6 rounds."""
    return (yield from msb(ctx, x - y, cb))


def lt_public(ctx: Ctx, x: RingArray, c: RingArray | int, cb: Comparisons) -> Proto[RingArray]:
    """Share of ``[x < c]`` for a public ``c`` (party 0 subtracts it); 6 rounds."""
    d = x - np.asarray(c).astype(np.uint64) if ctx.leader else x
    return (yield from msb(ctx, d, cb))
