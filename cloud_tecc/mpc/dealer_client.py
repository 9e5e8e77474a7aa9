"""A party's connection to the dealer service: fetch, expand and store batches.

``prefetch(k)`` is the offline phase (fetch and materialise ``k`` batches
before the online phase); ``take`` fetches more on demand if the program needs
more than was prefetched. Expansion of seeds runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import ssl

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.mpc import wslink
from cloud_tecc.mpc.bundle_wire import decode_batch
from cloud_tecc.mpc.correlations import Batch, Kind
from cloud_tecc.mpc.dealer_server import REQUEST
from cloud_tecc.mpc.errors import CorrelationError
from cloud_tecc.mpc.source import CorrelationStore
from cloud_tecc.mpc.wslink import RandomBytes


class RemoteSource:
    """Correlation source backed by a :class:`~cloud_tecc.mpc.dealer_server.DealerService`."""

    def __init__(self, party: int, frac_bits: int, wait_s: float) -> None:
        self.party = party
        self.store = CorrelationStore(party, frac_bits)
        self.wait_s = wait_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: wslink.Link | None = None
        self._lock = asyncio.Lock()
        self._seq: int | None = None  # next expected batch; a reconnect resumes anywhere

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        party: int,
        key: Ed25519PrivateKey,
        dealer_key: Ed25519PublicKey,
        frac_bits: int = 16,
        wait_s: float = 60.0,
        random_bytes: RandomBytes = os.urandom,
        tls: ssl.SSLContext | None = None,
    ) -> RemoteSource:
        """Connect and authenticate to the dealer at ``url`` (path ``/dealer``).

        Pass ``tls`` (and an ``https://`` URL) outside one host: the dealer link
        carries the masks, which an eavesdropper could combine with openings.
        """
        self = cls(party, frac_bits, wait_s)
        self._session, self._ws = await wslink.connect_dealer(
            url,
            party=party,
            key=key,
            dealer_key=dealer_key,
            wait_s=wait_s,
            random_bytes=random_bytes,
            tls=tls,
        )
        return self

    async def fetch(self, batches: int = 1) -> None:
        """Fetch ``batches`` batches and expand them into the store.

        All requests go out first, so the dealer streams the batches while this
        side expands the earlier ones (expansion runs in a worker thread).
        """
        async with self._lock:
            assert self._ws is not None
            for _ in range(batches):
                await self._ws.send(REQUEST)
            for _ in range(batches):
                data = await self._ws.receive(self.wait_s, "a dealer batch")
                seq, bundles = decode_batch(data, party=self.party)
                if self._seq is not None and seq != self._seq:
                    raise CorrelationError(f"dealer sent batch {seq}, expected {self._seq}")
                self._seq = seq + 1
                for b in bundles:
                    await asyncio.to_thread(self.store.add_bundle, b)

    async def prefetch(self, batches: int) -> None:
        """Offline phase: fetch and expand ``batches`` batches now."""
        if batches > 0:
            await self.fetch(batches)

    async def take(self, kind: Kind, count: int) -> Batch:
        """Next ``count`` correlations of ``kind``, fetching batches while short."""
        while self.store.available(kind) < count:
            before = self.store.available(kind)
            await self.fetch()
            if self.store.available(kind) == before:
                raise CorrelationError(
                    f"the dealer's plan has no {kind} correlations; add them to its plan"
                )
        return self.store.take(kind, count)

    async def close(self) -> None:
        """Close the dealer connection."""
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
