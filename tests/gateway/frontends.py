"""Stand-ins for a party's ingest frontends in front of a real party process.

:class:`RelayFrontend` is a real HTTPS server (aiohttp) holding the party's
TLS key, under a certificate of its own (as every frontend of a party issues
one for the party's key), that relays every request to the party. It can
play an overloaded frontend: the first ``overloaded`` batch uploads (or
every one, with ``overloaded=-1``) are answered ``503`` with
``Retry-After`` and ``{"status": "rejected", "reason": "overloaded"}``,
the answer JetStream-backed frontends give when their stream refuses, and
are not relayed. Every request is recorded with its monotonic time, path,
status and body.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from cloud_tecc.enclave.tls import generate_tls_key, self_signed, server_context


@dataclass(frozen=True)
class PartyTls:
    """A TLS key (and a certificate for it) given to the party as its operator ``tls`` files."""

    key_der: bytes
    cert: Path
    key: Path

    @classmethod
    def write(cls, folder: Path) -> PartyTls:
        """A fresh key and certificate in ``folder``."""
        key_der = generate_tls_key()
        private = serialization.load_der_private_key(key_der, password=None)
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / "party-tls.pem", folder / "party-tls.key"
        cert.write_bytes(self_signed(key_der, "party", ["127.0.0.1"]))
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cls(key_der, cert, key)

    def party_extra(self) -> dict[str, object]:
        """The deployment's party config keys that make the parties serve this key."""
        return {"tls": {"cert": str(self.cert), "key": str(self.key)}}

    def frontend_context(self) -> ssl.SSLContext:
        """A server context for the same key under a certificate of the frontend's own."""
        pem = self_signed(self.key_der, "frontend", ["127.0.0.1"])
        private = serialization.load_der_private_key(self.key_der, password=None)
        key_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return server_context(pem, key_pem)


@dataclass(frozen=True)
class Seen:
    """One request the frontend received."""

    at: float  # time.monotonic()
    path: str
    status: int
    body: bytes


class RelayFrontend:
    """HTTPS on ``port`` with ``tls``'s key; relays to ``target``; may answer 503 first."""

    def __init__(
        self, port: int, target: str, tls: PartyTls, *, overloaded: int = 0, retry_after: int = 2
    ) -> None:
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.target = target
        self.overloaded = overloaded  # batch uploads still to refuse (-1: all)
        self.retry_after = retry_after
        self.seen: list[Seen] = []
        self._context = tls.frontend_context()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def batches(self, status: int | None = None) -> list[Seen]:
        """The batch uploads received (with that answer status)."""
        return [
            s
            for s in self.seen
            if s.path == "/v1/batches" and (status is None or s.status == status)
        ]

    async def _handle(self, req: web.Request) -> web.Response:
        if self._client is None:
            raise web.HTTPServiceUnavailable
        body = await req.read() if req.can_read_body else b""
        if req.path == "/v1/batches" and self.overloaded != 0:
            if self.overloaded > 0:
                self.overloaded -= 1
            self.seen.append(Seen(time.monotonic(), req.path, 503, body))
            return web.json_response(
                {"status": "rejected", "reason": "overloaded"},
                status=503,
                headers={"Retry-After": str(self.retry_after)},
            )
        async with self._client.request(
            req.method,
            self.target + req.path_qs,
            data=body or None,
            headers={"Content-Type": req.content_type},
            ssl=False,
        ) as resp:
            answer = await resp.read()
            self.seen.append(Seen(time.monotonic(), req.path, resp.status, body))
            return web.Response(status=resp.status, body=answer, content_type=resp.content_type)

    async def start(self) -> None:
        """Start listening."""
        self._client = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._context)
        await site.start()

    async def stop(self) -> None:
        """Stop listening and close the upstream client."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None


class TcpForwarder:
    """A plain TCP forwarder (TLS passes through: the party's own key answers) that can die.

    :meth:`kill` closes the listener and every open connection at once, as a
    crashed load balancer or frontend host would.
    """

    def __init__(self, port: int, upstream: int) -> None:
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.upstream = upstream
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}
        await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))
        self._writers -= {writer, up_w}

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def kill(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
