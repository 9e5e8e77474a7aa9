"""The analyst's dashboard, served by the output service.

Static files ship in ``dashboard/`` (no CDN: the plant may be offline). Live
updates use server-sent events on ``/api/v1/events``: an ``update`` event each
time results or incidents change, so the page refetches without a reload. All
clients wait on one :class:`ChangeNotifier` that the collector signals (no
database poll per client); their number is capped.
``/api/v1/gateways`` relays the configured gateways' health documents,
decoded once into :class:`~cloud_tecc.service.health.GatewayHealthDoc` (unknown
fields ignored, see that module) and served as :class:`GatewayView` rows
(spool depth, backlog, clusters attested — metadata only).
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
import msgspec
from aiohttp import web

from cloud_tecc.service.health import (
    MAX_HEALTH_BYTES,
    GatewayHealthDoc,
    HealthDecodeError,
    decode_gateway_health,
)

STATIC_DIR: Final = Path(__file__).with_name("static")  # the page, its script and styles
_TYPES: Final = {
    "app.js": "text/javascript",
    "enrolment.js": "text/javascript",
    "app.css": "text/css",
}
MAX_SSE_CLIENTS: Final = 200


class GatewayView(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``/api/v1/gateways``: what the gateway's ``/healthz`` said, typed."""

    gateway_id: str
    reachable: bool
    #: ``ok``, ``spool full`` (the gateway answers 503), or why it was not reachable.
    status: str
    checked_s: float | None = None
    sealing: bool | None = None
    backlog: int | None = None
    #: Backfill sensors still holding the gateway's progress at their event time.
    backfilling: tuple[str, ...] = ()
    #: Frames spooled for all clusters together.
    spool_depth: int | None = None
    clusters_attested: int | None = None
    clusters: int | None = None


def gateway_view(gid: str, status: int, doc: GatewayHealthDoc, now_s: float) -> GatewayView:
    """The row of a decoded gateway health document (``status``: its HTTP status)."""
    links = doc.clusters.values()
    full = status == 503 or bool(doc.spool_overflow)
    return GatewayView(
        gateway_id=gid,
        reachable=True,
        status="spool full" if full else "ok",
        checked_s=now_s,
        sealing=doc.sealing,
        backlog=doc.backlog,
        backfilling=doc.backfilling,
        spool_depth=sum(link.depth for link in links),
        clusters_attested=sum(link.attested for link in links),
        clusters=len(doc.clusters),
    )


class GatewayHealth:
    """Polls each configured gateway's ``/healthz``; keeps the latest, decoded once."""

    def __init__(self, gateways: Mapping[str, str], *, interval_s: float = 2.0) -> None:
        self._urls = dict(gateways)
        self._interval = interval_s
        self._latest: dict[str, GatewayView] = {
            g: GatewayView(gateway_id=g, reachable=False, status="not polled yet") for g in gateways
        }

    def snapshot(self) -> list[dict[str, Any]]:
        """Latest health of every gateway, sorted by id."""
        return [msgspec.to_builtins(self._latest[g]) for g in sorted(self._latest)]

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll forever (cancel to stop)."""
        timeout = aiohttp.ClientTimeout(total=2.0)
        while True:
            for gid, url in self._urls.items():
                try:
                    async with session.get(url, timeout=timeout) as resp:
                        raw = await resp.content.read(MAX_HEALTH_BYTES + 1)
                        code = resp.status
                    view = gateway_view(gid, code, decode_gateway_health(raw), time.time())
                except (aiohttp.ClientError, TimeoutError, HealthDecodeError) as exc:
                    view = GatewayView(
                        gateway_id=gid,
                        reachable=False,
                        status=f"unreachable: {type(exc).__name__}",
                        checked_s=time.time(),
                    )
                self._latest[gid] = view
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
