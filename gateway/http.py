"""The agent's HTTP endpoints: ``/healthz`` (JSON) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.metrics import Metrics

Health = Callable[[], tuple[bool, dict[str, Any]]]


def make_app(metrics: Metrics, health: Health) -> web.Application:
    """Build the aiohttp app; ``health`` returns (healthy, details)."""

    async def healthz(_req: web.Request) -> web.Response:
        ok, details = health()
        return web.json_response(details, status=200 if ok else 503)

    async def metrics_view(_req: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_http(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving ``app``; the caller cleans up the returned runner."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
