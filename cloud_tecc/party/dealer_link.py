"""A party's correlation source on the dealer service, with cursor alignment.

Correlations only work if the k-th element of a kind lines up at every party.
After a restart of a party (or of the dealer) the parties' positions in the
dealer's batch sequence differ, so every MPC session starts with
:meth:`DealerLink.align`: both parties drop what they hold, report the
sequence number of the next batch they will receive, and the one behind
fetches and discards batches until both stand at the same one.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.mpc import wslink
from cloud_tecc.mpc.bundle_wire import decode_batch
from cloud_tecc.mpc.correlations import Batch, Bundle, Kind
from cloud_tecc.mpc.dealer_server import REQUEST
from cloud_tecc.mpc.errors import CorrelationError
from cloud_tecc.mpc.handshake import DEALER_NAME, party_name
from cloud_tecc.mpc.source import CorrelationStore


class DealerLink:
    """Implements the engine's ``CorrelationSource`` over an authenticated dealer socket."""

    def __init__(self, party: int, frac_bits: int, wait_s: float) -> None:
        self.party = party
        self.frac_bits = frac_bits
        self.wait_s = wait_s
        self.store = CorrelationStore(party, frac_bits)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._lock = asyncio.Lock()
        self._head: tuple[int, list[Bundle]] | None = None
        self.fetched = 0

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
    ) -> DealerLink:
        """Connect and authenticate (the dealer's key comes from its verified quote)."""
        self = cls(party, frac_bits, wait_s)
        self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        try:
            self._ws = await wslink.connect_retrying(
                self._session,
                url,
                deadline=loop.time() + wait_s,
                name=party_name(party),
                key=key,
                server_name=DEALER_NAME,
                server_key=dealer_key,
                wait_s=wait_s,
                random_bytes=os.urandom,
            )
        except BaseException:
            await self._session.close()
            raise
        return self

    async def _receive(self) -> tuple[int, list[Bundle]]:
        assert self._ws is not None
        await self._ws.send_bytes(REQUEST)
        data = await wslink.receive_bytes(self._ws, self.wait_s, "a dealer batch")
        self.fetched += 1
        return decode_batch(data, party=self.party)

    async def next_seq(self) -> int:
        """Sequence number of the next batch this party will use (fetches it if needed)."""
        async with self._lock:
            if self._head is None:
                self._head = await self._receive()
            return self._head[0]

    async def align(self, target: int) -> None:
        """Drop everything held and skip batches until the next one is ``target``."""
        async with self._lock:
            self.store = CorrelationStore(self.party, self.frac_bits)
            if self._head is None:
                self._head = await self._receive()
            while self._head[0] < target:
                self._head = await self._receive()
            if self._head[0] != target:
                raise CorrelationError(f"dealer is at batch {self._head[0]}, beyond {target}")

    async def _fetch(self) -> None:
        async with self._lock:
            if self._head is None:
                self._head = await self._receive()
            _, bundles = self._head
            self._head = None
            for b in bundles:
                await asyncio.to_thread(self.store.add_bundle, b)
                # Kinds the program uses less than the dealer's plan would pile up; drop
                # the excess. Both parties hold identical stores, so they drop identically.
                excess = self.store.available(b.kind) - 2 * b.count
                if excess > 0:
                    self.store.take(b.kind, excess)

    async def take(self, kind: Kind, count: int) -> Batch:
        """Next ``count`` correlations of ``kind``, fetching batches while short."""
        while self.store.available(kind) < count:
            before = self.store.available(kind)
            await self._fetch()
            if self.store.available(kind) == before:
                raise CorrelationError(f"the dealer's plan has no {kind} correlations")
        return self.store.take(kind, count)

    async def close(self) -> None:
        """Close the dealer connection."""
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
