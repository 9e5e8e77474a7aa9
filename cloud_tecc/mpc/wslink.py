"""aiohttp WebSocket plumbing shared by the party mesh and the dealer service.

Binary frames only; the handshake of :mod:`cloud_tecc.mpc.handshake` runs first
on every connection and keys a :class:`~cloud_tecc.mpc.handshake.Channel`; a
:class:`Link` then encrypts and authenticates every frame with it. Every wait
has a timeout and a lost connection becomes :class:`PeerLostError`. Bulk data
travels as raw bytes (no JSON, no base64).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.mpc import handshake
from cloud_tecc.mpc.errors import AuthenticationError, MpcError, PeerLostError, ProtocolError

RandomBytes = Callable[[int], bytes]
WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
#: No message-size cap: one round of 1 M comparisons is 12 MB. Frames are only
#: read after the peer authenticated.
MAX_MSG: Final = 0


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
    """An authenticated WebSocket whose frames travel through an encrypted channel."""

    def __init__(self, ws: WebSocket, channel: handshake.Channel, peer: str) -> None:
        self.ws, self.peer, self._channel = ws, peer, channel

    @property
    def closed(self) -> bool:
        """Whether the WebSocket is closed."""
        return self.ws.closed

    def seal(self, data: bytes | memoryview) -> bytes:
        """Encrypt the next frame (send it on :attr:`ws` in this order)."""
        return self._channel.seal(data)

    async def send(self, data: bytes | memoryview) -> None:
        """Encrypt and send one frame."""
        await self.ws.send_bytes(self._channel.seal(data))

    async def receive(self, wait_s: float, what: str) -> bytes:
        """Receive and decrypt the next frame (:class:`AuthenticationError` if forged)."""
        return self._channel.open(await receive_bytes(self.ws, wait_s, what))

    def open(self, data: bytes) -> bytes:
        """Decrypt a frame read directly from :attr:`ws` (in order)."""
        return self._channel.open(data)

    async def close(self) -> None:
        """Close the WebSocket."""
        await self.ws.close()


async def accept(
    request: web.Request,
    *,
    name: str,
    key: Ed25519PrivateKey,
    known: Mapping[str, Ed25519PublicKey],
    wait_s: float,
    random_bytes: RandomBytes = os.urandom,
) -> tuple[web.WebSocketResponse, Link | None]:
    """Upgrade ``request`` and run the server side of the handshake.

    Returns ``(ws, link)``; the link is None (and ``ws`` already closed) when
    the peer failed the handshake. The handler returns ``ws`` either way.
    """
    ws = web.WebSocketResponse(max_msg_size=MAX_MSG, compress=False, autoping=True)
    await ws.prepare(request)
    nonce, eph = random_bytes(handshake.NONCE), X25519PrivateKey.generate()
    try:
        await ws.send_bytes(handshake.hello(name, nonce, eph))
        auth = await receive_bytes(ws, wait_s, "handshake auth")
        peer, reply, channel = handshake.server_accept(
            auth, name=name, key=key, nonce_s=nonce, eph=eph, known=known
        )
        await ws.send_bytes(reply)
    except (MpcError, ConnectionError):
        await ws.close()
        return ws, None
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
) -> Link:
    """Connect to ``url`` (``https://`` when ``tls`` is given) and run the client handshake."""
    ws = await session.ws_connect(
        url, max_msg_size=MAX_MSG, compress=0, autoping=True, ssl=tls if tls is not None else True
    )
    try:
        channel = await _client_handshake(
            ws,
            name=name,
            key=key,
            server_name=server_name,
            server_key=server_key,
            wait_s=wait_s,
            random_bytes=random_bytes,
        )
    except PeerLostError as exc:
        await ws.close()
        raise AuthenticationError(
            f"{server_name!r} closed the connection during the handshake: check that it "
            "has this side's public key"
        ) from exc
    except BaseException:
        await ws.close()
        raise
    return Link(ws, channel, server_name)


async def _client_handshake(
    ws: aiohttp.ClientWebSocketResponse,
    *,
    name: str,
    key: Ed25519PrivateKey,
    server_name: str,
    server_key: Ed25519PublicKey,
    wait_s: float,
    random_bytes: RandomBytes,
) -> handshake.Channel:
    hello = await receive_bytes(ws, wait_s, "handshake hello")
    auth, state = handshake.client_auth(
        hello,
        name=name,
        key=key,
        expected_server=server_name,
        nonce_c=random_bytes(handshake.NONCE),
        eph=X25519PrivateKey.generate(),
    )
    await ws.send_bytes(auth)
    accepted = await receive_bytes(ws, wait_s, "handshake accept")
    return handshake.client_finish(accepted, state, server_key)


async def connect_retrying(
    session: aiohttp.ClientSession,
    url: str,
    *,
    deadline: float,
    **kwargs: object,
) -> Link:
    """:func:`connect`, retrying refused connections until ``deadline`` (loop time)."""
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
            delay = min(delay * 2, 0.5)


async def connect_dealer(
    url: str,
    *,
    party: int,
    key: Ed25519PrivateKey,
    dealer_key: Ed25519PublicKey,
    wait_s: float,
    random_bytes: RandomBytes = os.urandom,
    tls: ssl.SSLContext | None = None,
) -> tuple[aiohttp.ClientSession, Link]:
    """Party ``party``'s link to the dealer at ``url``, retried until ``wait_s``.

    Returns the HTTP session the link lives in (the caller closes both).
    """
    session = aiohttp.ClientSession()
    try:
        link = await connect_retrying(
            session,
            url,
            deadline=asyncio.get_running_loop().time() + wait_s,
            name=handshake.party_name(party),
            key=key,
            server_name=handshake.DEALER_NAME,
            server_key=dealer_key,
            wait_s=wait_s,
            random_bytes=random_bytes,
            tls=tls,
        )
    except BaseException:
        await session.close()
        raise
    return session, link
