"""The analyst's dashboard, served by the output service.

Static files ship in ``dashboard/`` (no CDN: the plant may be offline). Live
updates use server-sent events on ``/api/v1/events``: an ``update`` event each
time a new epoch of results is stored, so the page refetches without a reload.
``/api/v1/gateways`` relays the configured gateways' health documents
(spool depth and age, rejected readings by reason — metadata only).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

STATIC_DIR: Final = Path(__file__).with_name("dashboard")
_TYPES: Final = {
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class GatewayHealth:
    """Polls each configured gateway's ``/healthz`` and keeps the latest document."""

    def __init__(self, gateways: Mapping[str, str], *, interval_s: float = 2.0) -> None:
        self._urls = dict(gateways)
        self._interval = interval_s
        self._latest: dict[str, dict[str, Any]] = {
            g: {"gateway_id": g, "reachable": False, "status": "not polled yet"} for g in gateways
        }

    def snapshot(self) -> list[dict[str, Any]]:
        """Latest health of every gateway, sorted by id."""
        return [self._latest[g] for g in sorted(self._latest)]

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll forever (cancel to stop)."""
        timeout = aiohttp.ClientTimeout(total=2.0)
        while True:
            for gid, url in self._urls.items():
                try:
                    async with session.get(url, timeout=timeout) as resp:
                        doc = await resp.json(content_type=None)
                    if not isinstance(doc, dict):
                        raise ValueError("health document is not an object")
                    self._latest[gid] = {**doc, "gateway_id": gid, "reachable": True}
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self._latest[gid] = {
                        "gateway_id": gid,
                        "reachable": False,
                        "status": f"unreachable: {type(exc).__name__}",
                        "checked_s": time.time(),
                    }
            await asyncio.sleep(self._interval)


def attach_dashboard(
    app: web.Application,
    *,
    change_marker: Callable[[], int],
    gateways: GatewayHealth,
    poll_s: float = 0.5,
) -> None:
    """Add the page, its static files, the SSE stream and the gateway relay to ``app``."""

    async def index(_r: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=_SECURITY_HEADERS)

    async def static(r: web.Request) -> web.StreamResponse:
        name = r.match_info["name"]
        if name not in _TYPES:
            raise web.HTTPNotFound
        return web.FileResponse(
            STATIC_DIR / name, headers={**_SECURITY_HEADERS, "Content-Type": _TYPES[name]}
        )

    async def gateways_api(_r: web.Request) -> web.Response:
        return web.json_response(gateways.snapshot())

    async def events(r: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(r)
        last = -1
        idle = 0.0
        try:
            while True:
                marker = await asyncio.to_thread(change_marker)
                if marker != last:
                    last = marker
                    payload = json.dumps({"marker": marker})
                    await resp.write(f"event: update\ndata: {payload}\n\n".encode())
                    idle = 0.0
                elif idle >= 15.0:
                    await resp.write(b": keep-alive\n\n")
                    idle = 0.0
                await asyncio.sleep(poll_s)
                idle += poll_s
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/v1/gateways", gateways_api)
    app.router.add_get("/api/v1/events", events)
