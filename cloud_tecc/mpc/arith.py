"""Ring arithmetic on additive shares: local linear ops, Beaver multiply and square, truncation.

Shares are uint64 arrays; party ``i`` holds ``x_i`` with ``Σ x_i = x (mod 2^64)``.
Public constants are added by party 0 only.

Square (one round, one opening): with a dealer pair ``[a], [a²]`` the parties
open ``e = x − a`` and take ``[x²] = [a²] + 2e·[a] + e²`` (``e²`` by party 0):
half the opened bytes of a Beaver product ``x·x``, and ``e`` is masked by the
fresh uniform ``a`` exactly as a Beaver opening is.

Truncation (one round, SecretFlow SPU semi2k ``TruncAPr`` style): requires
``−2^62 ≤ x < 2^62`` as a signed value. Party 0 adds 2^62 so ``x' ∈ [0, 2^63)``;
the parties open ``c = x' + r`` (uniform, since ``r`` is); with
``r = r_msb·2^63 + r_low`` and ``c = c_msb·2^63 + c_low``:
``x' = b·2^63 + c_low − r_low`` where ``b = c_msb ⊕ r_msb``, hence
``y = b·2^(63−f) + (c_low >> f) − (r_low >> f) − 2^(62−f)`` equals
``⌊x / 2^f⌋`` or ``⌊x / 2^f⌋ + 1``: at most one LSB off, never more, with no
failure probability. See docs/MPC.md for the derivation.
"""

from __future__ import annotations

import numpy as np

from cloud_tecc.mpc.protocol import Ctx, Open, Proto, arith, as_ring
from cloud_tecc.mpc.tuples import Squares, Triples, TruncPairs
from tecc_contract.ring import RingArray

_ONE = np.uint64(1)
_MASK63 = np.uint64((1 << 63) - 1)
_HALF62 = np.uint64(1 << 62)


def add_public(ctx: Ctx, x: RingArray, c: RingArray | int) -> RingArray:
    """Share of ``x + c`` for a public ``c`` (party 0 adds it)."""
    if ctx.leader:
        return x + np.asarray(c).astype(np.uint64)
    return x.copy()


def mul(ctx: Ctx, x: RingArray, y: RingArray, t: Triples) -> Proto[RingArray]:
    """Beaver multiplication, one round: share of ``x·y`` (no truncation)."""
    a, b, c = t.a, t.b, t.c
    d, e = yield Open((arith(x - a), arith(y - b)))
    z = c + d * b
    z += e * a
    if ctx.leader:
        z += d * e
    return as_ring(z)


def square(ctx: Ctx, x: RingArray, s: Squares) -> Proto[RingArray]:
    """Share of ``x²`` from a square pair, one round opening ``x − a`` only (no truncation)."""
    a = s.a
    (e,) = yield Open((arith(x - a),))
    z = s.aa + (e << _ONE) * a
    if ctx.leader:
        z += e * e
    return as_ring(z)


def trunc(ctx: Ctx, x: RingArray, tp: TruncPairs) -> Proto[RingArray]:
    """Probabilistic-free truncation by ``frac_bits``, one round; requires |x| < 2^62."""
    f = ctx.frac_bits
    r, r_msb, r_t = tp.r, tp.r_msb, tp.r_low_shifted
    masked = x + r
    if ctx.leader:
        masked += _HALF62
    (c,) = yield Open((arith(masked),))
    c_msb = c >> np.uint64(63)
    # b = c_msb ⊕ r_msb = c_msb + r_msb·(1 − 2·c_msb), c_msb public.
    y = r_msb * (_ONE - (c_msb << _ONE))
    if ctx.leader:
        y += c_msb
    y <<= np.uint64(63 - f)
    y -= r_t
    if ctx.leader:
        y += (c & _MASK63) >> np.uint64(f)
        y -= np.uint64(1 << (62 - f))
    return as_ring(y)


def mul_fixed(ctx: Ctx, x: RingArray, y: RingArray, t: Triples, tp: TruncPairs) -> Proto[RingArray]:
    """Fixed-point product (two rounds): Beaver multiply, then truncate by ``frac_bits``."""
    z = yield from mul(ctx, x, y, t)
    return (yield from trunc(ctx, z, tp))
