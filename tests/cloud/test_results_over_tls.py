"""A party delivers results to an output service that serves HTTPS on its own host.

The output service on a non-loopback address always serves HTTPS with a
certificate it generated (cloud_tecc/output/gate.py); the real listener's TLS
context answers here, on loopback, with the certificate it issues for a LAN
address. The process test on separate network hosts is tests/e2e/test_netns.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from aiohttp import web

from cloud_tecc.output.gate import tls_context
from cloud_tecc.party.coordinator import post_results
from demo.services import free_port
from tests.cloud.services import NO_AUTH_LISTENERS

AUTH = NO_AUTH_LISTENERS


async def test_results_reach_an_output_with_its_generated_certificate(tmp_path: Path) -> None:
    """The sealed message is posted over the output's HTTPS, whose certificate no CA signed.

    Fails on the code before this change: the party verified the output's
    certificate against the system CAs (``certificate verify failed:
    self-signed certificate``), so with the output service on its own host no
    result was ever delivered and no window released.
    """
    got: list[object] = []

    async def results(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.json_response({"status": "stored"}, status=202)

    async def refused(request: web.Request) -> web.Response:
        return web.json_response({"error": "not attested"}, status=403)

    app = web.Application()
    app.router.add_post("/v1/results", results)
    app.router.add_post("/other/v1/results", refused)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    ctx = tls_context(AUTH, tmp_path, ["10.77.0.12"])
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    envelope = {"sender": "party0", "purpose": "results", "ct": "AA==", "sig": "AA=="}
    try:
        async with aiohttp.ClientSession() as http:
            answer = await post_results(http, f"https://127.0.0.1:{port}", envelope)
            other = await post_results(http, f"https://127.0.0.1:{port}/other", envelope)
    finally:
        await runner.cleanup()
    assert answer == (202, "")
    assert got == [envelope]
    assert other[0] == 403
    assert json.loads(other[1]) == {"error": "not attested"}
