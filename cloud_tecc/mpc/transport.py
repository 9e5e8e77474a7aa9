"""The transport interface the engine drives, and the in-memory implementation.

A transport moves one message per peer per round. ``exchange`` sends this
party's message to each named peer and returns each peer's message for the
same round id; it raises :class:`PeerLostError` when a peer is gone or silent
beyond the timeout, and :class:`ProtocolError` when a peer's message belongs to
another round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from cloud_tecc.mpc.errors import MpcParameterError, PeerLostError, ProtocolError

Payload = bytes | bytearray | memoryview


class Transport(Protocol):
    """Round-based message exchange between the compute parties."""

    async def exchange(self, round_id: int, outgoing: Mapping[int, Payload]) -> dict[int, Payload]:
        """Send ``outgoing[peer]`` to each peer; return each peer's message for ``round_id``."""
        ...

    async def close(self) -> None:
        """Release the connections; peers then see :class:`PeerLostError`."""
        ...


_CLOSED = object()


class MemoryNetwork:
    """Queues between ``n`` parties of one event loop; ``transport(i)`` is party i's end."""

    def __init__(self, n: int, *, timeout: float = 30.0) -> None:
        if n < 2:
            raise MpcParameterError(f"a network needs at least 2 parties, got {n}")
        self.n = n
        self.timeout = timeout
        self._queues: dict[tuple[int, int], asyncio.Queue[object]] = {
            (s, d): asyncio.Queue() for s in range(n) for d in range(n) if s != d
        }

    def transport(self, party: int) -> MemoryTransport:
        """Party ``party``'s transport."""
        return MemoryTransport(self, party)

    def queue(self, src: int, dst: int) -> asyncio.Queue[object]:
        """The queue of messages from party ``src`` to party ``dst``."""
        return self._queues[(src, dst)]


class MemoryTransport:
    """In-memory transport for tests and single-process runs (no copies of payloads)."""

    def __init__(self, net: MemoryNetwork, party: int) -> None:
        self._net = net
        self.party = party

    async def exchange(self, round_id: int, outgoing: Mapping[int, Payload]) -> dict[int, Payload]:
        """Deliver to each peer's queue, then wait for each peer's message of this round."""
        for dst, data in outgoing.items():
            self._net.queue(self.party, dst).put_nowait((round_id, data))
        got: dict[int, Payload] = {}
        for src in outgoing:
            try:
                async with asyncio.timeout(self._net.timeout):
                    item = await self._net.queue(src, self.party).get()
            except TimeoutError as exc:
                raise PeerLostError(
                    f"party {src} sent nothing for round {round_id} within "
                    f"{self._net.timeout} s; check that it is running the same program"
                ) from exc
            if item is _CLOSED:
                raise PeerLostError(f"party {src} closed its transport before round {round_id}")
            assert isinstance(item, tuple)
            rid: int = item[0]
            payload: Payload = item[1]
            if rid != round_id:
                raise ProtocolError(
                    f"party {src} sent round {rid} while this party is at {round_id}"
                )
            got[src] = payload
        return got

    async def close(self) -> None:
        """Tell every peer this party is gone."""
        for dst in range(self._net.n):
            if dst != self.party:
                self._net.queue(self.party, dst).put_nowait(_CLOSED)
