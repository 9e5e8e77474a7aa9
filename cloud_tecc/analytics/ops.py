"""The six non-linear operations the analytics program needs, and their plaintext form.

The analytics program (:mod:`cloud_tecc.analytics.program`) is written once
against :class:`Ops`. Run with :class:`PlainOps` on plaintext ring values it is
the reference algorithm; run with the MPC adapter
(:class:`cloud_tecc.analytics.secure.MpcOps`) on additive shares it is the secure
computation. Linear operations (add, subtract, multiply by a public integer,
prefix sums) are plain numpy on uint64 in both cases: they act on shares
locally.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.ring import RingArray


class Ops(Protocol):
    """Non-linear operations on (shares of) ring vectors."""

    @property
    def frac_bits(self) -> int:
        """Fraction bits removed by :meth:`trunc`."""
        ...

    def public(self, c: RingArray) -> RingArray:
        """This party's share of the public vector ``c``."""
        ...

    async def mul(self, a: RingArray, b: RingArray) -> RingArray:
        """Elementwise ring product (no truncation)."""
        ...

    async def square(self, a: RingArray) -> RingArray:
        """Elementwise ring square ``a·a`` (no truncation); cheaper than ``mul(a, a)`` in MPC."""
        ...

    async def trunc(self, a: RingArray) -> RingArray:
        """Arithmetic shift right by :attr:`frac_bits`; may be one LSB high. Needs |a| < 2^62."""
        ...

    async def ltz(self, a: RingArray) -> RingArray:
        """0/1 ring vector: 1 where ``a < 0`` as a signed value. Needs |a| < 2^63."""
        ...

    async def ltz_times(
        self, plain: RingArray, x: RingArray
    ) -> tuple[RingArray, RingArray, RingArray]:
        """``ltz(plain)``, ``ltz(x)`` and ``ltz(x)·x`` (the select of a min/max) at once."""
        ...


class PlainOps:
    """:class:`Ops` on plaintext ring values: exact floor truncation, exact sign."""

    def __init__(self, frac_bits: int = DEFAULT_FRAC_BITS) -> None:
        self._f = frac_bits

    @property
    def frac_bits(self) -> int:
        """Fraction bits removed by :meth:`trunc`."""
        return self._f

    def public(self, c: RingArray) -> RingArray:
        """The public vector itself."""
        return np.asarray(c, dtype=np.uint64).copy()

    async def mul(self, a: RingArray, b: RingArray) -> RingArray:
        """Elementwise ring product."""
        return a * b

    async def square(self, a: RingArray) -> RingArray:
        """Elementwise ring square."""
        return a * a

    async def trunc(self, a: RingArray) -> RingArray:
        """Floor division by 2^f (arithmetic shift)."""
        return (a.view(np.int64) >> np.int64(self._f)).view(np.uint64)

    async def ltz(self, a: RingArray) -> RingArray:
        """1 where ``a`` is negative."""
        return (a >> np.uint64(63)).astype(np.uint64)

    async def ltz_times(
        self, plain: RingArray, x: RingArray
    ) -> tuple[RingArray, RingArray, RingArray]:
        """Sign bits of ``plain`` and ``x``, and ``x`` where it is negative (else 0)."""
        bx = await self.ltz(x)
        return await self.ltz(plain), bx, bx * x
