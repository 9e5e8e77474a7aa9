"""Derive a dealer plan by tracing a dry run of a program, not by estimating it.

The anchor is CrypTen's ``TupleProvider.trace``: run the program once and
count the correlations it asks for. Every MPC program here is
data-oblivious — which correlations it takes, and how many, depends only on
public shapes (readings per stream, the policy), never on share values — so
one dry run on zero-valued inputs of the right shapes gives the exact counts
for those shapes. :func:`trace_plan` runs ``program`` for every party in
one event loop over the in-memory transport and an in-process dealer, and
records each party's requests with a :class:`TracingSource`; the parties
must agree (a program whose requests differ between parties would misalign
correlations in production, and is refused here).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable

from cloud_tecc.mpc.correlations import Batch, Kind, Plan
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.errors import CorrelationError
from cloud_tecc.mpc.source import CorrelationSource, LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.types import RandomBytes


class TracingSource:
    """A correlation source that counts what it hands out, per kind."""

    def __init__(self, inner: CorrelationSource) -> None:
        self._inner = inner
        self.counts: Counter[Kind] = Counter()
        self.requests = 0

    async def take(self, kind: Kind, count: int) -> Batch:
        """Record the request, then serve it from the wrapped source."""
        self.counts[kind] += count
        self.requests += 1
        return await self._inner.take(kind, count)

    def plan(self) -> Plan:
        """The counts as a dealer plan (one batch = exactly what the run used)."""
        c = self.counts
        return Plan(
            triples=c[Kind.TRIPLE],
            truncs=c[Kind.TRUNC],
            dabits=c[Kind.DABIT],
            comparisons=c[Kind.CMP],
            squares=c[Kind.SQUARE],
            compare_selects=c[Kind.CMP_SELECT],
        )


async def trace_plan(
    program: Callable[[Party], Awaitable[object]],
    *,
    n: int = 2,
    frac_bits: int = DEFAULT_FRAC_BITS,
    random_bytes: RandomBytes = os.urandom,
) -> Plan:
    """Run ``program`` once for ``n`` parties; return the correlations it used.

    :class:`CorrelationError` if the parties asked for different amounts.
    """
    net = MemoryNetwork(n)
    dealer = LocalDealer(n, frac_bits=frac_bits, random_bytes=random_bytes)
    tracers = [TracingSource(dealer.source(i)) for i in range(n)]
    parties = [Party(i, n, net.transport(i), tracers[i], frac_bits=frac_bits) for i in range(n)]
    await asyncio.gather(*(program(p) for p in parties))
    plans = {t.plan() for t in tracers}
    if len(plans) != 1:
        raise CorrelationError(
            "the parties of the traced program used different correlations: "
            f"{sorted(map(str, plans))}"
        )
    return plans.pop()
