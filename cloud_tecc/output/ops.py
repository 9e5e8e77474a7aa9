"""The operations listener: ``/healthz`` and ``/metrics`` apart from the public one.

With ``auth.ops_listen`` set, the public listener answers 404 on both paths
and this plain-HTTP listener (meant for loopback or a monitoring network)
serves them without sign-in: the health document and Prometheus metrics
carry no released value.
"""

from __future__ import annotations

from aiohttp import web

from cloud_tecc.service.base import ServiceBase


async def serve_ops(service: ServiceBase, host: str, port: int) -> web.AppRunner:
    """Start the ops listener; the caller cleans the runner up."""
    app = web.Application()

    async def healthz(_r: web.Request) -> web.Response:
        return web.json_response(service.health())

    async def metrics(r: web.Request) -> web.StreamResponse:
        return await service.metrics_response(r)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
