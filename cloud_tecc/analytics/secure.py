"""The secure analytics: the program of :mod:`cloud_tecc.analytics.program` on shares.

:class:`MpcOps` adapts an MPC engine :class:`~cloud_tecc.mpc.engine.Party` to
the :class:`~cloud_tecc.analytics.ops.Ops` interface; :func:`secure_epoch`
runs one epoch and returns this party's release shares. Empty operations are
skipped identically at every party (their sizes are public), so no round is
spent on them.
"""

from __future__ import annotations

import numpy as np

from cloud_tecc.analytics.plan import EpochInput
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.program import EpochOutput, run_epoch
from cloud_tecc.analytics.release import ReleaseShares, build_release
from cloud_tecc.mpc.engine import Party
from tecc_contract.ring import RingArray


class MpcOps:
    """:class:`~cloud_tecc.analytics.ops.Ops` over an MPC party (shares in, shares out)."""

    def __init__(self, party: Party) -> None:
        self.party = party

    @property
    def frac_bits(self) -> int:
        """Fraction bits of the engine's truncation."""
        return self.party.ctx.frac_bits

    def public(self, c: RingArray) -> RingArray:
        """Share of a public vector: party 0 holds it, the others zero."""
        return self.party.add_public(np.zeros(len(c), dtype=np.uint64), c)

    async def mul(self, a: RingArray, b: RingArray) -> RingArray:
        """Beaver product (one round)."""
        if not len(a):
            return np.zeros(0, dtype=np.uint64)
        return await self.party.mul(a, b)

    async def square(self, a: RingArray) -> RingArray:
        """Square from a dealer square pair (one round, one opening per element)."""
        if not len(a):
            return np.zeros(0, dtype=np.uint64)
        return await self.party.square(a)

    async def trunc(self, a: RingArray) -> RingArray:
        """Truncation by the engine's fraction bits (one round)."""
        if not len(a):
            return np.zeros(0, dtype=np.uint64)
        return await self.party.trunc(a)

    async def ltz(self, a: RingArray) -> RingArray:
        """Sign bit as an arithmetic 0/1 share (six rounds)."""
        if not len(a):
            return np.zeros(0, dtype=np.uint64)
        return await self.party.msb(a)

    async def ltz_times(
        self, plain: RingArray, x: RingArray
    ) -> tuple[RingArray, RingArray, RingArray]:
        """Sign bits of both and ``[x < 0]·x``, in the six rounds of one comparison."""
        if not len(x):
            return await self.ltz(plain), np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        bp, bx, prod = await self.party.msb_times(x, plain)
        return bp, bx, prod


async def secure_epoch(
    party: Party, policy: AnalyticsPolicy, epoch: EpochInput
) -> tuple[EpochOutput, ReleaseShares]:
    """Run one epoch on shares; returns the output (new states) and the release shares."""
    ops = MpcOps(party)
    out = await run_epoch(ops, policy, epoch)
    return out, build_release(policy, epoch, out, ops.frac_bits, party.n)
