"""The attestation loop: one cluster's malformed answers do not stop the others."""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from demo.services import free_port
from gateway.cli import _enrol_once
from gateway.config_yaml import load_config
from gateway.enrol import Attestor, TpmEvidence, _requote_s
from tests.gateway.harness import wait_for, write_config
from tests.gateway.receiver import Platform


@dataclass(frozen=True)
class _Ref:
    index: int
    url: str
    service_id: str


class _FakeEvidence(TpmEvidence):
    """The TPM side reduced to parsing the challenge as the real one does (no TPM)."""

    def __init__(self) -> None:  # no TPM, no keys: pure message handling
        pass

    def request(self) -> dict[str, Any]:
        return {"gateway_id": "gw-test"}

    def answer(self, challenge: dict[str, Any], tag: bytes) -> dict[str, Any]:
        nonce = bytes.fromhex(str(challenge["nonce"]))
        return {"gateway_id": "gw-test", "nonce": nonce.hex(), "tag": tag.hex()}


def _app(calls: dict[str, int]) -> web.Application:
    async def junk(_: web.Request) -> web.Response:
        calls["junk"] += 1
        return web.json_response({})  # no nonce: KeyError while answering

    async def challenge(_: web.Request) -> web.Response:
        return web.json_response({"nonce": "00" * 16, "pcrs": [7]})

    async def finish(_: web.Request) -> web.Response:
        calls["good"] += 1
        return web.json_response({"status": "enrolled", "requote_s": 0})  # clamped to 1 s

    app = web.Application()

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>")

    app.router.add_post("/c0/v1/enrol/challenge", junk)
    app.router.add_post("/c2/v1/enrol/challenge", broken)
    app.router.add_post("/c0/v1/attest/challenge", junk)
    app.router.add_post("/c1/v1/enrol/challenge", challenge)
    app.router.add_post("/c1/v1/attest/challenge", challenge)
    app.router.add_post("/c1/v1/enrol/finish", finish)
    app.router.add_post("/c1/v1/attest/quote", finish)
    return app


async def _serve(calls: dict[str, int]) -> tuple[web.AppRunner, str]:
    """The fake clusters on a free loopback port: the runner (clean up after) and base URL."""
    port = free_port()
    runner = web.AppRunner(_app(calls))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_a_malformed_answer_does_not_stop_the_other_clusters(tmp_path: Path) -> None:
    """Cluster 0 answers ``{}``; cluster 1 keeps being re-quoted and cluster 0's failures are
    counted (fails on the code before this change: the KeyError ended the TaskGroup, which
    cancelled cluster 1's task)."""
    calls = {"junk": 0, "good": 0}
    runner, base = await _serve(calls)
    refs = [_Ref(0, f"{base}/c0", "party0"), _Ref(1, f"{base}/c1", "party1")]
    cfg = load_config(write_config(tmp_path, clusters=refs, platform=Platform()))
    attestor = Attestor(cfg, _FakeEvidence())
    try:
        async with aiohttp.ClientSession() as http:
            task = asyncio.create_task(attestor.run(http))
            await wait_for(lambda: calls["good"] >= 3 or task.done(), 15, "three good quotes")
            assert not task.done()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await runner.cleanup()
    assert calls["junk"] >= 1
    snap = attestor.snapshot()
    assert snap["0"]["failures"] >= 1
    assert "malformed" in snap["0"]["reason"]
    assert snap["1"] == {"status": "enrolled", "reason": "", "failures": 0}
    assert attestor.state[1].requote_s == 1.0


def test_requote_interval_is_clamped() -> None:
    """A cluster's ``requote_s`` is kept within [1 s, 1 day]; junk keeps the last interval
    (fails on the code before this change: no such bound, ``float("junk")`` raised)."""
    assert _requote_s(0, 300.0) == 1.0
    assert _requote_s(-5, 300.0) == 1.0
    assert _requote_s(1e12, 300.0) == 86400.0
    assert _requote_s("30", 300.0) == 30.0
    assert _requote_s(math.nan, 300.0) == 300.0
    assert _requote_s(math.inf, 300.0) == 300.0
    assert _requote_s("junk", 300.0) == 300.0
    assert _requote_s(None, 300.0) == 300.0
    assert _requote_s([1], 300.0) == 300.0
    assert _requote_s(True, 300.0) == 300.0


async def test_enrol_once_goes_on_after_a_cluster_error(tmp_path: Path) -> None:
    """``tecc-gateway enrol``: a cluster answering HTTP 502 / non-JSON or a malformed challenge
    is recorded as an error and the next cluster is still enrolled (fails on the code before
    this change: the first GatewayError / KeyError ended the command)."""
    calls = {"junk": 0, "good": 0}
    runner, base = await _serve(calls)
    refs = [_Ref(0, f"{base}/c2", "p0"), _Ref(1, f"{base}/c0", "p1"), _Ref(2, f"{base}/c1", "p2")]
    cfg = load_config(write_config(tmp_path, clusters=refs, platform=Platform()))
    try:
        out = await _enrol_once(cfg, _FakeEvidence())
    finally:
        await runner.cleanup()
    assert out[0]["status"] == "error"
    assert "non-JSON" in str(out[0]["error"])
    assert out[1]["status"] == "error"
    assert "KeyError" in str(out[1]["error"])
    assert out[2]["status"] == "enrolled"


async def test_the_attestation_loop_moves_to_the_next_endpoint(tmp_path: Path) -> None:
    """Cluster 1's first endpoint is dead: the loop enrols through its second one (fails on
    the code before this change: a cluster had one URL)."""
    calls = {"junk": 0, "good": 0}
    runner, base = await _serve(calls)
    refs = [_Ref(0, f"{base}/c1", "party0"), _Ref(1, f"{base}/c1", "party1")]
    path = write_config(tmp_path, clusters=refs, platform=Platform())
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][1]["urls"] = [f"http://127.0.0.1:{free_port()}", doc["clusters"][1].pop("url")]
    path.write_text(yaml.safe_dump(doc))
    attestor = Attestor(load_config(path), _FakeEvidence())
    try:
        async with aiohttp.ClientSession() as http:
            task = asyncio.create_task(attestor.run(http))
            await wait_for(
                lambda: attestor.state[1].status == "enrolled" or task.done(), 15, "cluster 1"
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await runner.cleanup()
    assert attestor.state[1].status == "enrolled"


async def test_enrol_once_tries_the_next_endpoint_when_one_is_unreachable(tmp_path: Path) -> None:
    """``tecc-gateway enrol``: a dead first endpoint, the second enrols (fails on the code before
    this change: a cluster had one URL)."""
    calls = {"junk": 0, "good": 0}
    runner, base = await _serve(calls)
    refs = [_Ref(0, f"{base}/c1", "p0"), _Ref(1, f"{base}/c1", "p1")]
    path = write_config(tmp_path, clusters=refs, platform=Platform())
    doc = yaml.safe_load(path.read_text())
    dead = f"http://127.0.0.1:{free_port()}"
    doc["clusters"][0]["urls"] = [dead, doc["clusters"][0].pop("url")]
    del doc["clusters"][1]["url"]
    doc["clusters"][1]["urls"] = [dead, f"http://127.0.0.1:{free_port()}"]
    path.write_text(yaml.safe_dump(doc))
    try:
        out = await _enrol_once(load_config(path), _FakeEvidence())
    finally:
        await runner.cleanup()
    assert out[0]["status"] == "enrolled"
    assert out[1]["status"] == "unreachable"  # both endpoints dead: the last error is kept
