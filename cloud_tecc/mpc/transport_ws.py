"""WebSocket transport between compute parties in separate processes (aiohttp).

Party ``i`` serves ``GET /mpc`` on its own address and connects to every other
party; every connection is authenticated by the Ed25519 handshake, which also
keys an AES-256-GCM channel for every later frame. A round is one link
message per peer whose frames carry the round id and length as authenticated
header (:meth:`~cloud_tecc.mpc.wslink.Link.seal_round`; a payload over 1 MiB
travels as several bounded frames, decrypted in place into one buffer); a
message for another round is a :class:`ProtocolError`, a closed or silent
peer (or a frame that fails to decrypt) a :class:`PeerLostError`.

Every transport draws a random session token; after the handshake each side of
a connection sends its token first. :meth:`WsTransport.start` returns only once,
for every peer, the connection it opened and the one it accepted belong to the
same transport of that peer: a restarted or retrying peer can otherwise leave one
link to its previous transport (whose queued messages and close would then be
taken for the new session's, and the two sides' sessions never line up again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, cast

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.mpc import wslink
from cloud_tecc.mpc.errors import (
    AuthenticationError,
    MpcError,
    MpcParameterError,
    PeerLostError,
    ProtocolError,
)
from cloud_tecc.mpc.handshake import LinkSuite, party_index, party_name
from cloud_tecc.mpc.transport import Payload

log = logging.getLogger(__name__)
_CLOSED: Final = object()
TOKEN_BYTES: Final = 16
#: How long closing the mesh waits for the peers' closing handshakes (each link's own bound).
CLOSE_S: Final = wslink.CLOSE_S
#: Pause after a round over a peer's addresses in which none answered, doubling up to the max.
DIAL_PAUSE_S: Final = 0.05
DIAL_PAUSE_MAX_S: Final = 0.2


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Where every party listens, this party's key, and every peer's public key."""

    party: int
    addresses: Mapping[int, tuple[str, int]]
    key: Ed25519PrivateKey
    peer_keys: Mapping[int, Ed25519PublicKey]
    round_timeout: float = 60.0
    connect_timeout: float = 30.0
    #: TLS for the links (strongly advised outside one host): this party's
    #: server context (certificate) and the client context that verifies peers.
    server_tls: ssl.SSLContext | None = None
    client_tls: ssl.SSLContext | None = None
    #: Key agreement of the links (hybrid ML-KEM-768 + X25519 with the PQ suite).
    suite: LinkSuite = LinkSuite.X25519
    #: Time an unauthenticated peer has to complete the handshake.
    handshake_s: float = wslink.HANDSHAKE_S
    #: The MPC session (one per shard, :func:`~cloud_tecc.mpc.handshake.shard_session`):
    #: in every handshake name, so links of different sessions never pair.
    session: str = ""
    #: More addresses of a peer, dialled in turn after ``addresses[j]`` (a peer party
    #: whose shard has standbys: only its lease holder listens, docs/CLOUD.md).
    alternates: Mapping[int, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    #: The longest one attempt at an address of several may take (a listener that
    #: accepts and never answers); a refused address is left at once for the next.
    attempt_s: float = 1.5
    n: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", len(self.addresses))
        if set(self.addresses) != set(range(self.n)) or self.n < 2:
            raise MpcParameterError("addresses must name parties 0..n-1 (n >= 2)")
        if not set(range(self.n)) - {self.party} <= set(self.peer_keys):
            raise MpcParameterError("peer_keys must hold the public key of every other party")
        if (self.server_tls is None) != (self.client_tls is None):
            raise MpcParameterError("give both server_tls and client_tls, or neither")
        if self.round_timeout <= 0 or self.connect_timeout <= 0 or self.handshake_s <= 0:
            raise MpcParameterError("timeouts must be positive")


async def _send_all(link: wslink.Link, frames: list[memoryview]) -> None:
    for frame in frames:
        await link.ws.send_bytes(cast("bytes", frame))  # aiohttp takes any buffer


class WsTransport:
    """The party mesh over loopback or LAN WebSockets; create with :meth:`start`.

    Each ordered pair (i, j) has its own connection, initiated by the receiver
    ``j`` and served by the sender ``i``: data only ever flows server → client,
    so no frame is masked (RFC 6455 masks client frames, which costs a copy and
    an XOR pass over every byte).
    """

    def __init__(self, cfg: MeshConfig) -> None:
        self.cfg = cfg
        self._peers = [j for j in range(cfg.n) if j != cfg.party]
        self._queues: dict[int, asyncio.Queue[object]] = {j: asyncio.Queue() for j in self._peers}
        self._send: dict[int, wslink.Link] = {}
        self._recv: dict[int, wslink.Link] = {}
        self._token = os.urandom(TOKEN_BYTES)
        #: Session token of the peer transport behind each connection we opened / accepted.
        self._recv_token: dict[int, bytes] = {}
        self._send_token: dict[int, bytes] = {}
        self._recv_lost: set[int] = set()
        self._changed = asyncio.Event()
        self._started = False
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        #: Unauthenticated upgrades in their handshake (capped; refusals counted).
        self.gate = wslink.HandshakeGate()

    @classmethod
    async def start(cls, cfg: MeshConfig) -> WsTransport:
        """Listen, connect to every peer, wait until every peer connected back."""
        self = cls(cfg)
        await self._listen()
        self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.connect_timeout
        try:
            for j in self._peers:
                ws = await self._dial(j, deadline)
                self._recv[j] = ws
                await ws.send(self._token)
                self._recv_token[j] = await ws.receive(
                    max(deadline - loop.time(), 0.01), "the peer's session token"
                )
                self._tasks.append(asyncio.create_task(self._read(j, ws)))
            async with asyncio.timeout(max(deadline - loop.time(), 0.01)):
                await self._paired()
            self._started = True
        except (TimeoutError, MpcError, ConnectionError, aiohttp.ClientError) as exc:
            missing = sorted(set(self._peers) - set(self._send))
            await self.close()
            if isinstance(exc, MpcError):
                raise
            if not isinstance(exc, TimeoutError):
                raise PeerLostError(f"mesh connection failed: {exc}") from exc
            raise PeerLostError(f"parties {missing} did not connect within the timeout") from exc
        return self

    async def _dial(self, j: int, deadline: float) -> wslink.Link:
        """Connect to peer ``j``: its one address, or its addresses in turn until one answers.

        With several addresses (a peer shard with standbys: only its lease holder
        listens) each round tries every address once and moves on at a refusal, so
        a dead or standby worker listed first costs a refused connect, not
        ``attempt_s``; a listener that accepts and never answers (frozen) is given
        ``attempt_s``. Between rounds ``DIAL_PAUSE_S``, doubling up to ``DIAL_PAUSE_MAX_S``.
        """
        cfg, loop = self.cfg, asyncio.get_running_loop()
        addresses = [cfg.addresses[j], *cfg.alternates.get(j, ())]
        session = self._session
        if session is None:
            raise PeerLostError("the mesh is not started")
        several = len(addresses) > 1
        pause = DIAL_PAUSE_S
        while True:
            for host, port in addresses:
                # several: one attempt (deadline now); one: retried until the deadline
                until = loop.time() if several else deadline
                bound = (
                    min(cfg.attempt_s, deadline - loop.time()) if several else until - loop.time()
                )
                try:
                    # a frozen listener accepts TCP and never answers: bound each attempt
                    async with asyncio.timeout(max(bound, 0.01) + 0.5):
                        return await wslink.connect_retrying(
                            session,
                            f"{wslink.scheme(cfg.client_tls)}://{host}:{port}/mpc",
                            deadline=until,
                            name=party_name(cfg.party, cfg.session),
                            key=cfg.key,
                            server_name=party_name(j, cfg.session),
                            server_key=cfg.peer_keys[j],
                            wait_s=cfg.connect_timeout,
                            tls=cfg.client_tls,
                            suite=cfg.suite,
                        )
                except (PeerLostError, TimeoutError):
                    if not several or loop.time() >= deadline:
                        raise
                    log.debug("party %d not at %s:%d; trying its next address", j, host, port)
            await asyncio.sleep(max(0.0, min(pause, deadline - loop.time())))
            pause = min(2 * pause, DIAL_PAUSE_MAX_S)

    async def _paired(self) -> None:
        """Wait until each peer's accepted connection comes from the transport we reached."""
        while True:
            self._changed.clear()
            for j in self._peers:
                if j in self._recv_lost:
                    raise PeerLostError(f"party {j} closed the connection while the mesh formed")
            if all(
                j in self._send and self._send_token.get(j) == self._recv_token[j]
                for j in self._peers
            ):
                return
            await self._changed.wait()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_get("/mpc", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.cfg.addresses[self.cfg.party]
        await web.TCPSite(self._runner, host, port, ssl_context=self.cfg.server_tls).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        known = {party_name(j, self.cfg.session): k for j, k in self.cfg.peer_keys.items()}
        resp, link = await wslink.accept(
            request,
            name=party_name(self.cfg.party, self.cfg.session),
            key=self.cfg.key,
            known=known,
            wait_s=self.cfg.connect_timeout,
            suite=self.cfg.suite,
            gate=self.gate,
            handshake_s=self.cfg.handshake_s,
        )
        if link is None or not isinstance(resp, web.WebSocketResponse):
            return resp
        ws = resp
        j = party_index(link.peer)
        try:
            await link.send(self._token)
            token = await link.receive(self.cfg.connect_timeout, "a session token")
        except (MpcError, ConnectionError):
            await ws.close()
            return ws
        old = self._send.get(j)
        if self._started and not self._closing and token != self._send_token.get(j):
            # An authenticated new transport of party j while ours runs: j restarted, or
            # another worker of it took its shard over (the old one may be frozen and
            # never close). End this session now instead of after a round timeout; the
            # next session pairs with the new transport.
            log.warning("party %d connected from a new session; ending this one", j)
            self._recv_lost.add(j)
            self._queues[j].put_nowait(_CLOSED)
            self._changed.set()
        if self._started or self._closing:
            await ws.close()
            return ws
        # Before the mesh is up, the newest connection from j replaces an older one
        # (which may come from a transport j has since abandoned).
        self._send[j] = link
        self._send_token[j] = token
        self._changed.set()
        if old is not None:
            await old.close()
        # This connection only carries our frames to j; reading it serves pings and close.
        async for _msg in ws:
            pass
        if self._send.get(j) is link:
            self._queues[j].put_nowait(_CLOSED)
        return ws

    async def _read(self, j: int, link: wslink.Link) -> None:
        q = self._queues[j]
        try:
            async for msg in link.ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                got = link.open_round(msg.data)
                if got is not None:  # else more chunks of this message follow
                    q.put_nowait(got)
        except (AuthenticationError, ProtocolError):
            pass  # a forged, reordered or oversized message ends the link: PeerLostError
        finally:
            q.put_nowait(_CLOSED)
            self._recv_lost.add(j)
            self._changed.set()

    async def exchange(self, round_id: int, outgoing: Mapping[int, Payload]) -> dict[int, Payload]:
        """Send the round's message to each peer (its frames carry the round id), collect theirs."""
        sends = []
        for j, payload in outgoing.items():
            link = self._send.get(j)
            if link is None or link.closed:
                raise PeerLostError(f"party {j} is not connected")
            # Sealed in order here (the channel's counter); peers are served concurrently.
            frames = link.seal_round(round_id, cast("bytes", payload))
            sends.append(_send_all(link, frames))
        try:
            await asyncio.gather(*sends)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise PeerLostError(f"sending round {round_id} failed: {exc}") from exc
        got: dict[int, Payload] = {}
        for j in outgoing:
            q = self._queues[j]
            try:
                if q.empty():
                    async with asyncio.timeout(self.cfg.round_timeout):
                        item = await q.get()
                else:  # the peer's message is here already: no timer to arm
                    item = q.get_nowait()
            except TimeoutError as exc:
                raise PeerLostError(
                    f"party {j} sent nothing for round {round_id} within {self.cfg.round_timeout} s"
                ) from exc
            if item is _CLOSED:
                self._queues[j].put_nowait(_CLOSED)
                raise PeerLostError(f"party {j} disconnected before round {round_id}")
            assert isinstance(item, tuple)
            if item[0] != round_id:
                raise ProtocolError(f"party {j} sent round {item[0]}, this party is at {round_id}")
            got[j] = item[1]
        return got

    def has_incoming(self) -> bool:
        """Whether a peer's message (or a lost link) is queued: a peer has begun a round."""
        return any(not q.empty() for q in self._queues.values())

    async def close(self) -> None:
        """Close every connection and stop listening."""
        if self._closing:
            return
        self._closing = True
        sockets: list[wslink.Link] = [*self._send.values(), *self._recv.values()]
        # Concurrently and bounded: a frozen peer never answers the closing handshake
        # (aiohttp would wait 10 s for each link); a peer that does is closed cleanly.
        closing = [asyncio.create_task(ws.close()) for ws in sockets]
        if closing:
            _, stuck = await asyncio.wait(closing, timeout=CLOSE_S)
            for t in stuck:
                t.cancel()
            await asyncio.gather(*closing, return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
