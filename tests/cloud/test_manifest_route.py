"""``GET /v1/manifest`` and the clusters' ``attestation.platform`` / ``release_manifest`` keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from cloud_tecc.config import Trust
from cloud_tecc.errors import CloudConfigError
from cloud_tecc.service import manifest
from tecc_contract.schema import convert
from tests.contract.test_manifest import manifest as signed


async def _get(path: Path | None) -> tuple[int, bytes, CollectorRegistry]:
    reg = CollectorRegistry()
    app = web.Application()
    manifest.routes(app, path, reg)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1/manifest")
        return resp.status, await resp.read(), reg


async def test_serves_the_file_and_follows_changes(tmp_path: Path) -> None:
    """The file's bytes are served; a replaced file is served without a restart."""
    path = tmp_path / "m.json"
    path.write_bytes(signed().to_bytes())
    reg = CollectorRegistry()
    app = web.Application()
    manifest.routes(app, path, reg)
    async with TestClient(TestServer(app)) as client:
        first = await (await client.get("/v1/manifest")).read()
        path.write_bytes(signed(note="v2").to_bytes())
        second = await (await client.get("/v1/manifest")).read()
        path.write_text("{broken")
        broken = await client.get("/v1/manifest")
        path.unlink()
        missing = await client.get("/v1/manifest")
    assert first == signed().to_bytes()
    assert second == signed(note="v2").to_bytes()
    assert (broken.status, missing.status) == (503, 503)
    samples = {
        r: reg.get_sample_value("tecc_manifest_unavailable_total", {"reason": r})
        for r in ("malformed", "missing")
    }
    assert samples == {"malformed": 1.0, "missing": 1.0}


async def test_without_release_manifest_the_answer_is_404() -> None:
    """A service with no release_manifest configured says so."""
    status, body, _ = await _get(None)
    assert status == 404
    assert b"release_manifest" in body


def test_unknown_platform_names_the_key_and_the_known_values() -> None:
    """attestation.platform: an unknown verifier is a config error naming key and values."""
    with pytest.raises(CloudConfigError, match=r"platform.*'sgx'.*write one of simulated"):
        convert({"platform": "sgx"}, Trust, source="party.yaml", error=CloudConfigError)
    assert convert({}, Trust, source="party.yaml", error=CloudConfigError).platform == "simulated"
