"""aiohttp WebSocket plumbing shared by the party mesh and the dealer service.

Binary frames only; the handshake of :mod:`cloud_tecc.mpc.handshake` runs first
on every connection and keys a :class:`~cloud_tecc.mpc.handshake.Channel`; a
:class:`Link` then encrypts and authenticates every frame with it. Every wait
has a timeout and a lost connection becomes :class:`PeerLostError`. Bulk data
travels as raw bytes (no JSON, no base64).

Nothing an unauthenticated peer sends can grow memory without bound: a
listener caps every frame it receives at :data:`MAX_ACCEPT_FRAME` (4 KiB: the
connecting side only sends the handshake, a token and requests), a connecting
side at :data:`MAX_FRAME` (aiohttp refuses a larger frame from its header,
before buffering it); messages
larger than one chunk travel as several frames and are reassembled only from
an authenticated peer, up to a cap; the handshake must complete within
:data:`HANDSHAKE_S`; and a listener admits at most :data:`MAX_PENDING`
unauthenticated upgrades at a time (:class:`HandshakeGate`, further upgrades
get HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
from collections.abc import Mapping
from typing import Final

import aiohttp
import numpy as np
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.mpc import handshake
from cloud_tecc.mpc.errors import AuthenticationError, MpcError, PeerLostError, ProtocolError
from tecc_contract.types import RandomBytes

log = logging.getLogger("cloud_tecc.mpc.wslink")
WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
#: Plaintext bytes per frame: a message larger than this travels as several
#: frames (:meth:`Link.send`), so no WebSocket frame ever exceeds :data:`MAX_FRAME`.
CHUNK: Final = 1 << 20
#: The WebSocket message cap of every link, before and after the handshake: one
#: chunk plus its flag and tag. aiohttp refuses a larger frame from its header,
#: before buffering any of it, so an unauthenticated peer can make this side
#: hold at most one such frame per pending upgrade.
MAX_FRAME: Final = CHUNK + 64
#: The frame cap of the listening side of every link, for its whole life. On the
#: mesh and dealer links data flows server → client only; the client sends
#: its handshake AUTH, a session token and dealer requests, all < 4 KiB. So an
#: unauthenticated peer that connects can make a listener hold at most this
#: much per pending upgrade.
MAX_ACCEPT_FRAME: Final = handshake.MAX_MESSAGE
#: Largest reassembled message from an authenticated peer (a round of 1 M
#: comparisons is 12 MB; a dealer batch for 20,000 readings a few MB).
MAX_MESSAGE: Final = 1 << 30
#: Time an unauthenticated peer has to complete the handshake.
HANDSHAKE_S: Final = 5.0
#: How long a closing side waits for the peer's answer to its WebSocket close frame
#: (aiohttp's default is 10 s). Nothing depends on that answer: a dealer counts a
#: batch as taken when it sent it, a mesh session ends either way. A peer that is
#: busy (a dealer waiting to generate a batch reads nothing) or frozen would
#: otherwise hold the closing side's next session back by 10 s.
CLOSE_S: Final = 1.0
#: Longest pause between two attempts of :func:`connect_retrying` (refused connections).
RETRY_MAX_S: Final = 0.2
#: Upgrades that may be in their handshake at once per listener; more are refused (503).
MAX_PENDING: Final = 16
_MORE, _LAST = b"\x01", b"\x00"
#: Header of a round frame after its flag: round id and message length (u64 LE each).
_ROUND_HEAD: Final = struct.Struct("<QQ")
ROUND_HEAD: Final = 1 + _ROUND_HEAD.size


def scheme(tls: ssl.SSLContext | None) -> str:
    """``https`` with a TLS context, else ``http``."""
    return "https" if tls is not None else "http"


async def receive_bytes(ws: WebSocket, wait_s: float, what: str) -> bytes:
    """Next binary frame, or PeerLostError on close/timeout."""
    try:
        msg = await ws.receive(timeout=wait_s)
    except TimeoutError as exc:
        raise PeerLostError(f"no {what} within {wait_s} s; is the peer running?") from exc
    if msg.type == aiohttp.WSMsgType.BINARY:
        data: bytes = msg.data
        return data
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
        raise PeerLostError(f"peer closed the connection while this side waited for {what}")
    if msg.type == aiohttp.WSMsgType.ERROR:
        raise PeerLostError(f"connection error while waiting for {what}: {ws.exception()}")
    raise ProtocolError(f"unexpected WebSocket message type {msg.type} while waiting for {what}")


class Link:
    """An authenticated WebSocket whose messages travel as encrypted, bounded frames.

    A message is one or more frames ``flag ‖ AES-GCM(chunk)``, the flag (``1``:
    more follow, ``0``: last) authenticated as associated data; chunks are at
    most :data:`CHUNK` bytes and a reassembled message at most ``max_message``.
    """

    def __init__(
        self,
        ws: WebSocket,
        channel: handshake.Channel,
        peer: str,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.ws, self.peer, self._channel = ws, peer, channel
        self.max_message = max_message
        self._parts: list[bytes] = []
        self._held = 0
        #: The round message being reassembled: header, buffer, bytes so far.
        self._round: tuple[bytes, np.ndarray[tuple[int], np.dtype[np.uint8]], int] | None = None

    @property
    def closed(self) -> bool:
        """Whether the WebSocket is closed."""
        return self.ws.closed

    def seal(self, data: bytes | memoryview) -> list[bytes]:
        """Encrypt the next message into its frames (send them on :attr:`ws` in order)."""
        view = memoryview(data).cast("B")
        frames = []
        for at in range(0, max(len(view), 1), CHUNK):
            flag = _LAST if at + CHUNK >= len(view) else _MORE
            frames.append(flag + self._channel.seal(view[at : at + CHUNK], flag))
        return frames

    async def send(self, data: bytes | memoryview) -> None:
        """Encrypt and send one message."""
        for frame in self.seal(data):
            await self.ws.send_bytes(frame)

    async def receive(self, wait_s: float, what: str) -> bytes:
        """Receive and decrypt the next message (:class:`AuthenticationError` if forged)."""
        while True:
            out = self.open(await receive_bytes(self.ws, wait_s, what))
            if out is not None:
                return out

    def open(self, frame: bytes) -> bytes | None:
        """Decrypt a frame read directly from :attr:`ws` (in order): the message once complete."""
        if len(frame) < 1 or frame[:1] not in (_MORE, _LAST):
            raise AuthenticationError(f"a frame from {self.peer!r} has no valid chunk flag")
        flag = frame[:1]
        part = self._channel.open(memoryview(frame)[1:], flag)
        self._held += len(part)
        if self._held > self.max_message:
            raise ProtocolError(
                f"{self.peer!r} sent a message over {self.max_message} bytes; refused"
            )
        if flag == _MORE:
            self._parts.append(part)
            return None
        if not self._parts:
            self._held = 0
            return part
        self._parts.append(part)
        out = b"".join(self._parts)
        self._parts, self._held = [], 0
        return out

    def seal_round(self, round_id: int, data: bytes | memoryview) -> list[memoryview]:
        """Encrypt one round message into frames ``flag ‖ round_id ‖ length ‖ AES-GCM(chunk)``.

        The 17-byte header is the associated data of its chunk, so the round id
        travels in the payload's own frames (no separate message) and a changed
        id, length or flag fails to open, as does a replayed or reordered frame
        (the channel's counter nonce). Each chunk is encrypted straight into its
        frame buffer: one AES-GCM pass, no concatenation.
        """
        view = memoryview(data).cast("B")
        size = len(view)
        frames = []
        for at in range(0, max(size, 1), CHUNK):
            chunk = view[at : at + CHUNK]
            flag = _LAST if at + CHUNK >= size else _MORE
            head = flag + _ROUND_HEAD.pack(round_id, size)
            frame = np.empty(ROUND_HEAD + len(chunk) + handshake.TAG, dtype=np.uint8)
            out = frame.data
            out[:ROUND_HEAD] = head
            self._channel.seal_into(chunk, head, out[ROUND_HEAD:])
            frames.append(out)
        return frames

    def open_round(self, frame: bytes) -> tuple[int, memoryview] | None:
        """Decrypt a round frame (in order): ``(round_id, message)`` once complete.

        The message is decrypted chunk by chunk into one buffer of the announced
        length (at most ``max_message``), so a large round is never joined.
        """
        if len(frame) < ROUND_HEAD + handshake.TAG or frame[:1] not in (_MORE, _LAST):
            raise AuthenticationError(f"a round frame from {self.peer!r} has no valid header")
        head, flag = frame[:ROUND_HEAD], frame[:1]
        if self._round is None:
            size = _ROUND_HEAD.unpack_from(head, 1)[1]
            if size > self.max_message:
                raise ProtocolError(
                    f"{self.peer!r} announced a message of {size} bytes, over "
                    f"{self.max_message}; refused"
                )
            self._round = head[1:], np.empty(size, dtype=np.uint8), 0
        want, buf, pos = self._round
        n = len(frame) - ROUND_HEAD - handshake.TAG
        if head[1:] != want or pos + n > buf.shape[0] or (flag == _MORE and n == 0):
            raise ProtocolError(
                f"{self.peer!r} sent a round frame that does not continue its message"
            )
        out = buf.data
        self._channel.open_into(memoryview(frame)[ROUND_HEAD:], head, out[pos : pos + n])
        pos += n
        if flag == _MORE:
            self._round = want, buf, pos
            return None
        self._round = None
        if pos != buf.shape[0]:
            raise ProtocolError(f"{self.peer!r} ended a round message short of its length")
        return _ROUND_HEAD.unpack_from(head, 1)[0], out

    async def close(self) -> None:
        """Close the WebSocket."""
        await self.ws.close()


class HandshakeGate:
    """Caps the upgrades of one listener that have not yet authenticated."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.pending = 0
        self.refused = 0
        self.failed = 0


async def accept(
    request: web.Request,
    *,
    name: str,
    key: Ed25519PrivateKey,
    known: Mapping[str, Ed25519PublicKey],
    wait_s: float,
    random_bytes: RandomBytes = os.urandom,
    suite: handshake.LinkSuite = handshake.LinkSuite.X25519,
    gate: HandshakeGate | None = None,
    handshake_s: float = HANDSHAKE_S,
    max_frame: int = MAX_ACCEPT_FRAME,
) -> tuple[web.StreamResponse, Link | None]:
    """Upgrade ``request`` and run the server side of the handshake.

    Returns ``(response, link)``; the link is None (and the response already
    closed, or a 503 when ``gate`` is full) when the peer failed the handshake.
    The handler returns the response either way. The peer has ``handshake_s``
    (at most ``wait_s``) to authenticate, and every frame it sends before (and
    after) is capped at ``max_frame`` bytes (:data:`MAX_ACCEPT_FRAME`: the
    connecting side only ever sends small messages).
    """
    if gate is not None and gate.pending >= gate.max_pending:
        gate.refused += 1
        if gate.refused % 1000 == 1:  # the first, then every 1000th: a flood must not flood the log
            log.warning(
                "%s: %d upgrades refused so far, %d handshakes pending (cap %d)",
                name,
                gate.refused,
                gate.pending,
                gate.max_pending,
            )
        return web.Response(status=503, text="too many pending handshakes"), None
    if gate is not None:
        gate.pending += 1
    try:
        ws = web.WebSocketResponse(
            max_msg_size=max_frame, compress=False, autoping=True, timeout=CLOSE_S
        )
        await ws.prepare(request)
        nonce, eph = random_bytes(handshake.NONCE), X25519PrivateKey.generate()
        kem = (
            MLKEM768PrivateKey.generate() if suite is handshake.LinkSuite.MLKEM768_X25519 else None
        )
        try:
            await ws.send_bytes(handshake.hello(name, nonce, eph, kem))
            auth = await receive_bytes(ws, min(handshake_s, wait_s), "handshake auth")
            peer, reply, channel = handshake.server_accept(
                auth, name=name, key=key, nonce_s=nonce, eph=eph, known=known, kem=kem
            )
            await ws.send_bytes(reply)
        except (MpcError, ConnectionError):
            if gate is not None:
                gate.failed += 1
            await ws.close()
            return ws, None
    finally:
        if gate is not None:
            gate.pending -= 1
    return ws, Link(ws, channel, peer)


async def connect(
    session: aiohttp.ClientSession,
    url: str,
    *,
    name: str,
    key: Ed25519PrivateKey,
    server_name: str,
    server_key: Ed25519PublicKey,
    wait_s: float,
    random_bytes: RandomBytes = os.urandom,
    tls: ssl.SSLContext | None = None,
    suite: handshake.LinkSuite = handshake.LinkSuite.X25519,
) -> Link:
    """Connect to ``url`` (``https://`` when ``tls`` is given) and run the client handshake."""
    ws = await session.ws_connect(
        url,
        max_msg_size=MAX_FRAME,
        compress=0,
        autoping=True,
        ssl=tls if tls is not None else True,
        timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_S),
    )
    try:
        hello = await receive_bytes(ws, wait_s, "handshake hello")
        auth, state = handshake.client_auth(
            hello,
            name=name,
            key=key,
            expected_server=server_name,
            nonce_c=random_bytes(handshake.NONCE),
            eph=X25519PrivateKey.generate(),
            suite=suite,
        )
        await ws.send_bytes(auth)
        accepted = await receive_bytes(ws, wait_s, "handshake accept")
        channel = handshake.client_finish(accepted, state, server_key)
    except PeerLostError as exc:
        await ws.close()
        raise AuthenticationError(
            f"{server_name!r} closed the connection during the handshake: check that it "
            "has this side's public key and the same link suite"
        ) from exc
    except BaseException:
        await ws.close()
        raise
    return Link(ws, channel, server_name)


async def connect_retrying(
    session: aiohttp.ClientSession,
    url: str,
    *,
    deadline: float,
    **kwargs: object,
) -> Link:
    """:func:`connect`, retrying refused connections until ``deadline`` (loop time).

    Pauses 50 ms after the first refusal, doubling up to ``RETRY_MAX_S``: a peer
    that is between two sessions listens again within a few hundred ms.
    """
    loop = asyncio.get_running_loop()
    delay = 0.05
    while True:
        try:
            return await connect(session, url, **kwargs)  # type: ignore[arg-type]
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise AuthenticationError(f"TLS to {url} failed: {exc}") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if loop.time() + delay > deadline:
                raise PeerLostError(f"cannot reach {url}: {exc}; is that service running?") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


async def connect_dealer(
    url: str,
    *,
    party: int,
    key: Ed25519PrivateKey,
    dealer_key: Ed25519PublicKey,
    wait_s: float,
    random_bytes: RandomBytes = os.urandom,
    tls: ssl.SSLContext | None = None,
    suite: handshake.LinkSuite = handshake.LinkSuite.X25519,
    mpc_session: str = "",
) -> tuple[aiohttp.ClientSession, Link]:
    """Party ``party``'s link to the dealer at ``url``, retried until ``wait_s``.

    ``mpc_session`` (one per shard) is in both handshake names: only the dealer of
    the same session accepts the link, and the party accepts only it.

    Returns the HTTP session the link lives in (the caller closes both).
    """
    session = aiohttp.ClientSession()
    try:
        link = await connect_retrying(
            session,
            url,
            deadline=asyncio.get_running_loop().time() + wait_s,
            name=handshake.party_name(party, mpc_session),
            key=key,
            server_name=handshake.dealer_name(mpc_session),
            server_key=dealer_key,
            wait_s=wait_s,
            random_bytes=random_bytes,
            tls=tls,
            suite=suite,
        )
    except BaseException:
        await session.close()
        raise
    return session, link
