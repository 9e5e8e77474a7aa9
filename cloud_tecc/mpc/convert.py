"""Bit-to-arithmetic conversion of XOR-shared bits with a dealer daBit, one round.

The parties open ``c = b ⊕ β`` (uniform, β is a random bit) and compute
``b = c ⊕ β = c + β − 2cβ`` on the arithmetic shares of β.
"""

from __future__ import annotations

import numpy as np

from cloud_tecc.mpc.bits import U8
from cloud_tecc.mpc.protocol import Ctx, Open, Proto, xor
from cloud_tecc.mpc.tuples import DaBits
from tecc_contract.ring import RingArray

_ONE = np.uint64(1)


def b2a(ctx: Ctx, bits: U8, db: DaBits) -> Proto[RingArray]:
    """Arithmetic share of the XOR-shared bits ``bits`` (uint8, each 0 or 1)."""
    (c,) = yield Open((xor((bits & np.uint8(1)) ^ db.bit_xor, 1),))
    c64 = c.astype(np.uint64)
    y = (_ONE - (c64 << _ONE)) * db.bit_arith
    if ctx.leader:
        y += c64
    return y
