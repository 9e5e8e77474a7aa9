"""The gateway's real ``/healthz`` decodes as the output's typed health document.

The output relays each gateway's health (``cloud_tecc/service/health.py``,
``GatewayHealthDoc``) and refuses a known field of the wrong type, so the Struct
must match what the agent really serves. Fails on the code before this change
(the Struct said ``backfilling: bool``; the agent serves the list of backfill
sensors, and the dashboard showed every gateway as unreachable).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec

from cloud_tecc.output.dashboard import gateway_view
from cloud_tecc.service.health import decode_gateway_health
from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import wait_for, write_config
from tests.gateway.receiver import FakeCluster, Platform


async def test_the_agents_health_decodes_as_the_output_reads_it(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    cfg = write_config(tmp_path, clusters=clusters, platform=platform)
    async with running(cfg, keys) as agent:
        await wait_for(lambda: all(link.attested_at for link in agent.links), 20, "attested")
        url = f"http://127.0.0.1:{agent.cfg.http.port}/healthz"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            raw, status = await r.read(), r.status
    doc = decode_gateway_health(raw)
    assert doc.gateway_id == agent.cfg.gateway_id
    view = msgspec.to_builtins(gateway_view(doc.gateway_id, status, doc, 1.0))
    assert view["status"] == "ok"
    assert (view["clusters"], view["clusters_attested"]) == (2, 2)
    assert view["spool_depth"] == 0
    assert tuple(view["backfilling"]) == ()  # no backfill source in this config
