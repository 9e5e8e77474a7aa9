"""The dealer as a service: generates batches ahead into a bounded buffer, serves parties.

Parties connect to ``GET /dealer`` (WebSocket, Ed25519 handshake as
``party-i``; the dealer is ``dealer``), send ``NEXT`` and receive their part
of the next batch (:mod:`cloud_tecc.mpc.bundle_wire`). A request that is not
``NEXT`` is logged and counted (``DealerStats.refused_requests``) and ends that
party's link; the party may reconnect and continue at its cursor.
Every batch is generated once for all parties (in a worker
thread, so the event loop stays responsive) and dropped when every party has
fetched it; at most ``depth`` batches wait, so a stalled party stalls
generation instead of exhausting memory. A party that reconnects replaces its
old connection and continues at its own cursor.

Run: ``python -m cloud_tecc.mpc.dealer_server --config mesh.json --comparisons 1000000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.mpc import wslink
from cloud_tecc.mpc.bundle_wire import decode_request, encode_batch
from cloud_tecc.mpc.config import MeshFile, load_private_key
from cloud_tecc.mpc.correlations import Plan
from cloud_tecc.mpc.dealer import deal
from cloud_tecc.mpc.errors import MpcError, MpcParameterError, ProtocolError
from cloud_tecc.mpc.handshake import LinkSuite, dealer_name, party_index, party_name
from cloud_tecc.mpc.memory import retain_freed_memory
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.types import RandomBytes

log = logging.getLogger("cloud_tecc.mpc.dealer")


@dataclass(slots=True)
class DealerStats:
    """What the dealer did: batches, correlations and the time spent generating."""

    batches: int = 0
    comparisons: int = 0
    generate_s: float = 0.0
    first_start: float | None = None
    last_delivery: float | None = None
    delivered: dict[int, int] = field(default_factory=dict)
    #: Requests that were not ``NEXT`` (each ended its party's link).
    refused_requests: int = 0


class DealerService:
    """Serve correlation batches for a standing ``plan`` to ``n`` authenticated parties."""

    def __init__(
        self,
        *,
        n: int,
        plan: Plan,
        key: Ed25519PrivateKey,
        party_keys: Mapping[int, Ed25519PublicKey],
        frac_bits: int = DEFAULT_FRAC_BITS,
        depth: int = 2,
        max_batches: int | None = None,
        wait_s: float = 60.0,
        random_bytes: RandomBytes = os.urandom,
        suite: LinkSuite = LinkSuite.X25519,
        handshake_s: float = wslink.HANDSHAKE_S,
        session: str = "",
    ) -> None:
        if depth < 1:
            raise MpcParameterError("dealer depth must be >= 1")
        if set(party_keys) != set(range(n)):
            raise MpcParameterError("party_keys must hold the key of every party 0..n-1")
        if not plan.counts():
            raise MpcParameterError("the dealer plan is empty")
        self.n, self.plan, self.key, self.frac_bits = n, plan, key, frac_bits
        self.depth, self.max_batches, self.wait_s = depth, max_batches, wait_s
        self.random_bytes = random_bytes
        self.suite, self.handshake_s = suite, handshake_s
        #: Unauthenticated upgrades in their handshake (capped; refusals counted).
        self.gate = wslink.HandshakeGate()
        #: The MPC session served (one dealer per shard): in every handshake name.
        self.session = session
        self.known = {party_name(i, session): k for i, k in party_keys.items()}
        self.stats = DealerStats()
        self._frames: dict[int, list[bytes | None]] = {}
        self._cursor = dict.fromkeys(range(n), 0)
        self._live: dict[int, asyncio.Task[object]] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.done = asyncio.Event()

    def _generate(self, seq: int) -> list[bytes | None]:
        per_party = deal(
            self.plan, self.n, frac_bits=self.frac_bits, random_bytes=self.random_bytes
        )
        return [encode_batch(i, seq, b) for i, b in enumerate(per_party)]

    async def _producer(self) -> None:
        seq = 0
        while self.max_batches is None or seq < self.max_batches:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._frames) < self.depth)
            t0 = time.perf_counter()
            if self.stats.first_start is None:
                self.stats.first_start = t0
            frames = await asyncio.to_thread(self._generate, seq)
            self.stats.generate_s += time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.comparisons += self.plan.comparisons
            async with self._changed:
                self._frames[seq] = frames
                self._changed.notify_all()
            seq += 1

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        """Start generating and listening (HTTPS when ``tls`` is given).

        Also tunes this process's allocator to reuse freed batch memory
        (:func:`~cloud_tecc.mpc.memory.retain_freed_memory`).
        """
        retain_freed_memory()
        app = web.Application()
        app.router.add_get("/dealer", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=tls).start()
        self._task = asyncio.create_task(self._producer())

    async def _next_frame(self, party: int) -> tuple[int, bytes]:
        seq = self._cursor[party]
        async with self._changed:
            await self._changed.wait_for(lambda: seq in self._frames)
            frame = self._frames[seq][party]
        assert frame is not None
        return seq, frame

    async def _delivered(self, party: int, seq: int) -> None:
        """Advance ``party`` past ``seq`` (only after the frame was sent)."""
        async with self._changed:
            frames = self._frames[seq]
            frames[party] = None
            self._cursor[party] = seq + 1
            if all(f is None for f in frames):
                del self._frames[seq]
                self._changed.notify_all()
        self.stats.delivered[party] = seq + 1
        self.stats.last_delivery = time.perf_counter()
        if self.max_batches is not None and all(
            self.stats.delivered.get(i, 0) >= self.max_batches for i in range(self.n)
        ):
            self.done.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        resp, link = await wslink.accept(
            request,
            name=dealer_name(self.session),
            key=self.key,
            known=self.known,
            wait_s=self.wait_s,
            suite=self.suite,
            gate=self.gate,
            handshake_s=self.handshake_s,
        )
        if link is None or not isinstance(resp, web.WebSocketResponse):
            return resp
        ws = resp
        party = party_index(link.peer)
        # One live connection per party keeps cursors sane: a reconnecting party
        # replaces its stale connection (whose handler may wait for a frame for a
        # request the party sent before it went away).
        stale = self._live.pop(party, None)
        if stale is not None:
            stale.cancel()
        me = asyncio.current_task()
        assert me is not None
        self._live[party] = me
        try:
            with contextlib.suppress(MpcError, ConnectionError):
                while await self._request(party, link):
                    seq, frame = await self._next_frame(party)
                    await link.send(frame)
                    await self._delivered(party, seq)
        finally:
            if self._live.get(party) is me:
                del self._live[party]
            await ws.close()
        return ws

    async def _request(self, party: int, link: wslink.Link) -> bool:
        """Wait for the party's next request: True for ``NEXT``; False (logged, counted) else."""
        data = await link.receive(24 * 3600.0, "a request")
        try:
            decode_request(data)
        except ProtocolError as exc:
            self.stats.refused_requests += 1
            log.warning("party %d sent a bad dealer request, link closed: %s", party, exc)
            return False
        return True

    def revoke(self, party: int) -> None:
        """Stop serving ``party`` (it failed re-attestation) until :meth:`admit` again."""
        self.known.pop(party_name(party, self.session), None)
        live = self._live.pop(party, None)
        if live is not None:
            live.cancel()

    def admit(self, party: int, key: Ed25519PublicKey) -> None:
        """Serve ``party`` under ``key`` (a changed key also drops its live link)."""
        name = party_name(party, self.session)
        if self.known.get(name) != key:
            self.revoke(party)
            self.known[name] = key

    async def close(self) -> None:
        """Stop generating and serving."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for handler in list(self._live.values()):  # may wait for frames that never come
            handler.cancel()
        if self._runner is not None:
            await self._runner.cleanup()


async def serve(args: argparse.Namespace) -> DealerStats:
    """Run the dealer until ``--batches`` batches reached every party (or forever)."""
    mesh = MeshFile.load(Path(args.config))
    svc = DealerService(
        n=mesh.n,
        plan=Plan(
            comparisons=args.comparisons,
            triples=args.triples,
            truncs=args.truncs,
            dabits=args.dabits,
            squares=args.squares,
            compare_selects=args.compare_selects,
        ),
        key=load_private_key(Path(args.key)),
        party_keys={i: p.public_key for i, p in enumerate(mesh.parties)},
        frac_bits=mesh.frac_bits,
        depth=args.depth,
        max_batches=args.batches,
    )
    await svc.start(mesh.dealer.host, mesh.dealer.port)
    try:
        await svc.done.wait()
    finally:
        await svc.close()
    return svc.stats


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the dealer's statistics as one JSON line when done."""
    ap = argparse.ArgumentParser(description="Serve MPC correlations to authenticated parties.")
    ap.add_argument("--config", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--comparisons", type=int, default=0)
    ap.add_argument("--triples", type=int, default=0)
    ap.add_argument("--truncs", type=int, default=0)
    ap.add_argument("--dabits", type=int, default=0)
    ap.add_argument("--squares", type=int, default=0)
    ap.add_argument("--compare-selects", type=int, default=0)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batches", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        stats = asyncio.run(serve(args))
    except MpcError as exc:
        print(f"dealer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    span = (stats.last_delivery or 0.0) - (stats.first_start or 0.0)
    print(
        json.dumps(
            {
                "batches": stats.batches,
                "comparisons": stats.comparisons,
                "generate_s": stats.generate_s,
                "deliver_span_s": span,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
