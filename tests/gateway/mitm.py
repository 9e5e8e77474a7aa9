"""An on-path TLS proxy with a certificate of its own (a man in the middle).

It terminates the gateway's TLS with its own key, forwards every request to
the real cluster (whose certificate it does not check) and relays the
answer, so the gateway sees a genuine, fresh quote — only the TLS key is not
the one that quote binds. Every request it relays is counted by path.
"""

from __future__ import annotations

from collections import Counter

import aiohttp
from aiohttp import web

from cloud_tecc.enclave.tls import generate_tls_key, listener_tls


class TlsInterceptor:
    """Listens on ``port`` with its own certificate and relays to ``target`` (a base URL)."""

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        self.target = target
        self.context, self.spki = listener_tls(generate_tls_key(), "interceptor", [])
        self.relayed: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def _relay(self, req: web.Request) -> web.Response:
        assert self._client is not None
        self.relayed[req.path] += 1
        async with self._client.request(
            req.method,
            self.target + req.path_qs,
            data=await req.read() if req.can_read_body else None,
            headers={"Content-Type": req.content_type},
            ssl=False,
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )

    async def start(self) -> None:
        """Start listening."""
        self._client = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.context).start()

    async def stop(self) -> None:
        """Stop listening and close the upstream client."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None
