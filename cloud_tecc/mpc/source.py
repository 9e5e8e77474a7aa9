"""Where a party's correlations come from: a per-kind store fed by a dealer.

Every party must consume correlations in the same order and amounts; since the
parties run the same program, each ``take`` sequence is identical and the
dealer delivers the same batch sequence to every party, so the k-th element of
every kind lines up across parties. :class:`LocalDealer` serves all parties of
one process (tests, ``run_parties``); :mod:`cloud_tecc.mpc.dealer_client`
fetches from a dealer service.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Protocol

from cloud_tecc.mpc.correlations import Batch, Bundle, Kind, Plan, concat, materialise
from cloud_tecc.mpc.dealer import deal, deal_kind
from cloud_tecc.mpc.errors import CorrelationError
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.types import RandomBytes


class CorrelationSource(Protocol):
    """Hands a party the next ``count`` correlations of a kind."""

    async def take(self, kind: Kind, count: int) -> Batch:
        """Return the next ``count`` correlations of ``kind`` (waits for the dealer if needed)."""
        ...


class CorrelationStore:
    """Materialised correlations of one party, consumed front to back per kind."""

    def __init__(self, party: int, frac_bits: int) -> None:
        self.party = party
        self.frac_bits = frac_bits
        self._queues: dict[Kind, deque[Batch]] = {k: deque() for k in Kind}

    def add_bundle(self, bundle: Bundle) -> None:
        """Expand one bundle (the party's offline work) and queue it."""
        self.check(bundle)
        self._queues[bundle.kind].append(materialise(bundle))

    def add_batch(self, batch: Batch) -> None:
        """Queue a batch already expanded (from a :meth:`check`-ed bundle)."""
        self._queues[batch.kind].append(batch)

    def check(self, bundle: Bundle) -> None:
        """:class:`CorrelationError` unless ``bundle`` is for this party and fraction bits."""
        if bundle.party != self.party:
            raise CorrelationError(f"bundle for party {bundle.party} given to party {self.party}")
        if bundle.frac_bits != self.frac_bits:
            raise CorrelationError(
                f"dealer uses {bundle.frac_bits} fraction bits, this party {self.frac_bits}: "
                "configure both with the same value"
            )

    def available(self, kind: Kind) -> int:
        """Correlations of ``kind`` ready to take."""
        return sum(b.count for b in self._queues[kind])

    def take(self, kind: Kind, count: int) -> Batch:
        """Pop ``count`` correlations of ``kind``; :class:`CorrelationError` if short."""
        q = self._queues[kind]
        if self.available(kind) < count:
            raise CorrelationError(f"only {self.available(kind)} {kind} correlations, need {count}")
        parts: list[Batch] = []
        need = count
        while need:
            head = q[0]
            if head.count <= need:
                parts.append(q.popleft())
                need -= head.count
            else:
                parts.append(head.slice(0, need))
                q[0] = head.slice(need, head.count)
                need = 0
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return Batch(kind, 0, {})
        return concat(parts)


class LocalDealer:
    """An in-process dealer serving the stores of all ``n`` parties of one process."""

    def __init__(
        self,
        n: int,
        *,
        frac_bits: int = DEFAULT_FRAC_BITS,
        random_bytes: RandomBytes = os.urandom,
        min_batch: int = 1024,
    ) -> None:
        self.n = n
        self.frac_bits = frac_bits
        self.random_bytes = random_bytes
        self.min_batch = min_batch
        self.stores = [CorrelationStore(i, frac_bits) for i in range(n)]

    def preprocess(self, plan: Plan) -> None:
        """Offline phase: generate one batch for ``plan`` into every party's store."""
        for per_party in zip(
            *deal(plan, self.n, frac_bits=self.frac_bits, random_bytes=self.random_bytes),
            strict=True,
        ):
            for store, bundle in zip(self.stores, per_party, strict=True):
                store.add_bundle(bundle)

    def refill(self, kind: Kind, count: int) -> None:
        """Generate at least ``count`` more correlations of ``kind`` for every party."""
        bundles = deal_kind(
            kind, max(count, self.min_batch), self.n, self.frac_bits, self.random_bytes
        )
        for store, bundle in zip(self.stores, bundles, strict=True):
            store.add_bundle(bundle)

    def source(self, party: int) -> LocalSource:
        """The correlation source for ``party``."""
        return LocalSource(self, party)


class LocalSource:
    """Party ``party``'s view of a :class:`LocalDealer`."""

    def __init__(self, dealer: LocalDealer, party: int) -> None:
        self._dealer = dealer
        self._store = dealer.stores[party]

    async def take(self, kind: Kind, count: int) -> Batch:
        """Next ``count`` correlations; generates on demand if the offline phase fell short."""
        short = count - self._store.available(kind)
        if short > 0:
            self._dealer.refill(kind, short)
        return self._store.take(kind, count)
