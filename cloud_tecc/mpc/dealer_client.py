"""The one dealer client: a party's correlation source on the dealer service.

It reads ahead, and it resumes after a restart of either side by alignment.
Cluster parties (:mod:`cloud_tecc.party.coordinator`) and the benchmark
deployment (:mod:`bench.mesh.node`) both use it.

Correlations only work if the k-th element of a kind lines up at every party.
After a restart of a party (or of the dealer) the parties' positions in the
dealer's batch sequence differ, so every MPC session starts with
:meth:`DealerLink.align`: both parties drop what they hold, report the
sequence number of the next batch they will use, and the one behind skips
batches until both stand at the same one.

A reader task receives, decodes and expands (seed expansion, in a worker
thread) the next batches ahead of use, so network, parsing and the party's
offline work overlap the computation. It expands :data:`GROUP` batches at a
time into joined arrays and hands out each batch as a view of them, so a
``take`` that spans consecutive batches of a group is a view, not a copy.
A fresh link expands nothing before :meth:`align` (or a first use):
:meth:`next_seq` reads the first batch's number from its frame header, and
batches below the alignment's target are dropped unexpanded, so a session's
start does not wait for the expansion of batches it skips. The correlation
store still changes only inside :meth:`take`, in program order, so every
party's store — including the trimming of kinds the program uses less than the
dealer's plan provides — is a function of the program alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Final

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.mpc import wslink
from cloud_tecc.mpc.bundle_wire import REQUEST, batch_seq, decode_batch
from cloud_tecc.mpc.correlations import Batch, Bundle, Kind, materialise_many
from cloud_tecc.mpc.errors import CorrelationError, PeerLostError
from cloud_tecc.mpc.handshake import LinkSuite
from cloud_tecc.mpc.source import CorrelationStore
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS

#: Batches received and expanded ahead of use (a batch of the default plan for
#: 20,000 readings expands to about 13 MB).
READ_AHEAD: Final = 8
#: Batches expanded together (a take within them needs no copy).
GROUP: Final = 4
_Item = tuple[int, list[Batch]] | BaseException


def _retrieved(first: asyncio.Future[int]) -> None:
    """Mark a failed first-frame future's exception as seen (a link nobody aligned)."""
    if not first.cancelled():
        first.exception()


class DealerLink:
    """Implements the engine's ``CorrelationSource`` over an authenticated dealer socket."""

    def __init__(self, party: int, frac_bits: int, wait_s: float) -> None:
        self.party = party
        self.frac_bits = frac_bits
        self.wait_s = wait_s
        self.store = CorrelationStore(party, frac_bits)
        self._session: aiohttp.ClientSession | None = None
        self._ws: wslink.Link | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=READ_AHEAD)
        self._reader: asyncio.Task[None] | None = None
        self._head: tuple[int, list[Batch]] | None = None
        self.fetched = 0
        #: Bytes of dealer frames received (seeds; party 0 also its corrections).
        self.bytes_received = 0
        self.wait_s_total = 0.0
        self._peak: dict[Kind, int] = {}
        #: Frames below this sequence number are dropped unexpanded (set by :meth:`align`).
        self._skip_below = 0
        #: Sequence number of the link's first frame, from its header (before expansion).
        self._first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._first.add_done_callback(_retrieved)
        self._taken = False  # whether any batch was handed out of the queue yet
        self._go = asyncio.Event()  # set by align() or a first use: expand from here on
        self._expect: int | None = None  # the batch the next one must be (a lazy align)
        #: Frames dropped unexpanded by an alignment.
        self.skipped = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        party: int,
        key: Ed25519PrivateKey,
        dealer_key: Ed25519PublicKey,
        frac_bits: int = DEFAULT_FRAC_BITS,
        wait_s: float = 60.0,
        tls: ssl.SSLContext | None = None,
        suite: LinkSuite = LinkSuite.X25519,
        mpc_session: str = "",
        connect_s: float | None = None,
    ) -> DealerLink:
        """Connect and authenticate (the dealer's key comes from its verified quote).

        Pass ``tls`` (and an ``https://`` URL) outside one host: the dealer link
        carries the masks, which an eavesdropper could combine with openings.
        ``connect_s``: how long to retry the connection (default ``wait_s``, which
        also bounds every wait for a batch).
        """
        self = cls(party, frac_bits, wait_s)
        self._session, ws = await wslink.connect_dealer(
            url,
            party=party,
            key=key,
            dealer_key=dealer_key,
            wait_s=wait_s if connect_s is None else connect_s,
            tls=tls,
            suite=suite,
            mpc_session=mpc_session,
        )
        self._ws = ws
        self._reader = asyncio.create_task(self._read_ahead(ws))
        return self

    async def _read_ahead(self, ws: wslink.Link) -> None:
        """Receive and expand batches ahead of use; a failure is queued after them.

        Batches received before the link failed are still handed out (a dealer
        that serves a fixed number of batches and closes is not an error until
        the program asks for more).
        """
        failure: BaseException | None = None
        try:
            for _ in range(GROUP):
                await ws.send(REQUEST)
        except Exception as exc:
            failure = exc
        while failure is None:
            frames = []
            try:
                for _ in range(GROUP):
                    frames.append(await ws.receive(self.wait_s, "a dealer batch"))
                    self.bytes_received += len(frames[-1])
                    if not self._first.done():
                        self._first.set_result(batch_seq(frames[-1], party=self.party))
                    await ws.send(REQUEST)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = exc
                if not self._first.done():
                    self._first.set_exception(PeerLostError(f"dealer link failed: {exc}"))
            # nothing is expanded before the session's alignment (or a first use) says
            # from which batch on: those below it are dropped as they are
            await self._go.wait()
            try:
                kept = [f for f in frames if batch_seq(f, party=self.party) >= self._skip_below]
                self.skipped += len(frames) - len(kept)
                items = await asyncio.to_thread(self._expand, kept) if kept else []
            except Exception as exc:
                items, failure = [], exc
            self.fetched += len(items)
            for item in items:
                await self._queue.put(item)
        await self._queue.put(failure)

    def _expand(self, frames: list[bytes]) -> list[tuple[int, list[Batch]]]:
        """Decode consecutive frames and expand each kind of all of them at once."""
        decoded = [decode_batch(data, party=self.party) for data in frames]
        by_kind: dict[Kind, list[Bundle]] = {}
        for _, bundles in decoded:
            for b in bundles:
                self.store.check(b)
                by_kind.setdefault(b.kind, []).append(b)
        joined = {k: materialise_many(bs) for k, bs in by_kind.items()}
        pos = dict.fromkeys(joined, 0)
        out = []
        for seq, bundles in decoded:
            views = []
            for b in bundles:
                views.append(joined[b.kind].slice(pos[b.kind], pos[b.kind] + b.count))
                pos[b.kind] += b.count
            out.append((seq, views))
        return out

    @property
    def lost(self) -> bool:
        """The link failed (the dealer went away): what is still queued is all there is."""
        return self._reader is not None and self._reader.done() and not self._reader.cancelled()

    async def _next(self) -> tuple[int, list[Batch]]:
        self._taken = True
        self._go.set()
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)
                raise PeerLostError(f"dealer link failed: {item}") from item
            if item[0] >= self._skip_below:  # below: expanded before an alignment
                break
        expect, self._expect = self._expect, None
        if expect is not None and item[0] != expect:
            raise CorrelationError(f"dealer is at batch {item[0]}, beyond {expect}")
        return item

    async def next_seq(self) -> int:
        """Sequence number of the next batch this party will use.

        On a fresh link that is the first frame's, read from its header: the session's
        alignment need not wait for the first group's expansion.
        """
        if self._head is None and not self._taken:
            return await asyncio.shield(self._first)
        if self._head is None:
            self._head = await self._next()
        return self._head[0]

    async def align(self, target: int) -> None:
        """Drop everything held and skip batches until the next one is ``target``.

        Frames below ``target`` not yet received are dropped by the reader unexpanded.
        On a fresh link this returns without waiting for any batch: the first frame's
        header says whether ``target`` is still to come (else :class:`CorrelationError`),
        and the first :meth:`take` waits for its expansion, so the session's first
        agreement round runs meanwhile.
        """
        self.store = CorrelationStore(self.party, self.frac_bits)
        self._peak = {}
        self._skip_below = max(self._skip_below, target)
        self._go.set()
        if self._head is None and not self._taken:
            first = await asyncio.shield(self._first)
            if first > target:
                raise CorrelationError(f"dealer is at batch {first}, beyond {target}")
            self._expect = target
            return
        if self._head is None:
            self._head = await self._next()
        while self._head[0] < target:
            self._head = await self._next()
        if self._head[0] != target:
            raise CorrelationError(f"dealer is at batch {self._head[0]}, beyond {target}")

    async def prefetch(self, batches: int) -> None:
        """Offline phase: move the next ``batches`` batches into the store now.

        Every party calls it at the same point (before the program), so the
        store stays a function of the program; nothing is trimmed here.
        """
        for _ in range(batches):
            await self._fetch(None)

    async def _fetch(self, wanted: Kind | None) -> None:
        t0 = time.perf_counter()
        head = self._head if self._head is not None else await self._next()
        self._head = None
        for b in head[1]:
            self.store.add_batch(b)
            # Kinds the program uses less than the dealer's plan provides would pile
            # up; keep at most twice the larger of a batch and the biggest request seen.
            # Both parties reach this point in the same program state.
            if wanted is not None and b.kind is not wanted:
                cap = 2 * max(b.count, self._peak.get(b.kind, 0))
                excess = self.store.available(b.kind) - cap
                if excess > 0:
                    self.store.take(b.kind, excess)
        self.wait_s_total += time.perf_counter() - t0

    async def take(self, kind: Kind, count: int) -> Batch:
        """Next ``count`` correlations of ``kind``, using batches while short."""
        self._peak[kind] = max(self._peak.get(kind, 0), count)
        while self.store.available(kind) < count:
            before = self.store.available(kind)
            await self._fetch(kind)
            if self.store.available(kind) == before:
                raise CorrelationError(f"the dealer's plan has no {kind} correlations")
        return self.store.take(kind, count)

    async def close(self) -> None:
        """Stop reading ahead and close the dealer connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
