"""Listeners beside the public one: operations and service intake.

With ``auth.ops_listen`` set, the public listener answers 404 on ``/healthz``
and ``/metrics`` and this plain-HTTP listener (meant for loopback or a
monitoring network) serves them without sign-in: the health document and
Prometheus metrics carry no released value.

With ``auth.intake_listen`` set, a plain-HTTP listener serves only the
service routes — ``GET /attestation`` and ``POST /v1/results`` — which
authenticate themselves (attested identity, signature, HPKE), so parties on
another host reach them without the dashboard's TLS certificate. No released
row is ever served there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from cloud_tecc.service.base import ServiceBase

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_intake(
    attestation: Handler, results: Handler, host: str, port: int
) -> web.AppRunner:
    """Start the intake listener; the caller cleans the runner up."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/attestation", attestation)
    app.router.add_post("/v1/results", results)
    return await _serve(app, host, port)


async def serve_ops(service: ServiceBase, host: str, port: int) -> web.AppRunner:
    """Start the ops listener; the caller cleans the runner up."""
    app = web.Application()

    async def healthz(_r: web.Request) -> web.Response:
        return web.json_response(service.health())

    async def metrics(r: web.Request) -> web.StreamResponse:
        return await service.metrics_response(r)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return await _serve(app, host, port)
