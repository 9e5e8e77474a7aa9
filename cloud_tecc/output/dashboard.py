"""The analyst's dashboard, served by the output service.

Static files ship in ``dashboard/`` (no CDN: the plant may be offline). Live
updates use server-sent events on ``/api/v1/events``: an ``update`` event each
time results or incidents change, so the page refetches without a reload. All
clients wait on one :class:`ChangeNotifier` that the collector signals (no
database poll per client); their number is capped.
``/api/v1/gateways`` relays the configured gateways' health documents
(spool depth and age, rejected readings by reason — metadata only).
``enrolment.js`` draws the gateway enrolment panel from
:mod:`cloud_tecc.output.enrolment_view` and MACs an admin's approve or revoke
with the cluster operator's key in the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

STATIC_DIR: Final = Path(__file__).with_name("static")  # the page, its script and styles
_TYPES: Final = {
    "app.js": "text/javascript",
    "enrolment.js": "text/javascript",
    "app.css": "text/css",
}
MAX_SSE_CLIENTS: Final = 200


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


class ChangeNotifier:
    """One shared change signal for every SSE client (no per-client database poll)."""

    def __init__(self) -> None:
        self.marker = 0
        self._cond = asyncio.Condition()

    async def notify(self) -> None:
        """Results or incidents changed."""
        async with self._cond:
            self.marker += 1
            self._cond.notify_all()

    async def wait(self, seen: int, timeout_s: float) -> int:
        """The marker once it differs from ``seen`` (or after ``timeout_s``)."""
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait_for(lambda: self.marker != seen), timeout_s)
            return self.marker


def attach_dashboard(
    app: web.Application,
    *,
    notifier: ChangeNotifier,
    gateways: GatewayHealth,
    keepalive_s: float = 15.0,
) -> None:
    """Add the page, its static files, the SSE stream and the gateway relay to ``app``."""
    clients = [0]

    async def index(_r: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def static(r: web.Request) -> web.StreamResponse:
        name = r.match_info["name"]
        if name not in _TYPES:
            raise web.HTTPNotFound
        return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": _TYPES[name]})

    async def gateways_api(_r: web.Request) -> web.Response:
        return web.json_response(gateways.snapshot())

    async def events(r: web.Request) -> web.StreamResponse:
        if clients[0] >= MAX_SSE_CLIENTS:
            return web.json_response({"error": "too many live clients"}, status=503)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        clients[0] += 1
        try:
            await resp.prepare(r)
            seen = -1
            while True:
                marker = notifier.marker if seen == -1 else await notifier.wait(seen, keepalive_s)
                if marker != seen:
                    seen = marker
                    payload = json.dumps({"marker": marker})
                    await resp.write(f"event: update\ndata: {payload}\n\n".encode())
                else:
                    await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            clients[0] -= 1
        return resp

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/v1/gateways", gateways_api)
    app.router.add_get("/api/v1/events", events)
