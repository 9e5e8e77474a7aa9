"""Run N parties and a dealer in one event loop over the in-memory transport."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cloud_tecc.mpc.correlations import Plan
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork, Transport
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.types import RandomBytes

T = TypeVar("T")


async def run_parties(
    n: int,
    fn: Callable[[Party], Awaitable[T]],
    *,
    frac_bits: int = DEFAULT_FRAC_BITS,
    random_bytes: RandomBytes = os.urandom,
    plan: Plan | None = None,
    round_timeout: float = 30.0,
    wrap: Callable[[int, Transport], Transport] | None = None,
) -> list[T]:
    """Run ``fn(party)`` for parties 0..n−1 concurrently; return their results in order.

    ``plan`` pre-generates correlations (the offline phase); anything short is
    generated on demand. ``wrap`` may decorate each party's transport (e.g. to
    record messages).
    """
    net = MemoryNetwork(n, timeout=round_timeout)
    dealer = LocalDealer(n, frac_bits=frac_bits, random_bytes=random_bytes)
    if plan is not None:
        dealer.preprocess(plan)
    parties = []
    for i in range(n):
        tr: Transport = net.transport(i)
        if wrap is not None:
            tr = wrap(i, tr)
        parties.append(Party(i, n, tr, dealer.source(i), frac_bits=frac_bits))
    return list(await asyncio.gather(*(fn(p) for p in parties)))
