"""The agent against the real TECC cluster services (two parties, dealer, output)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.keys import GatewayKeys
from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment, metric
from tests.gateway.conftest import running
from tests.gateway.harness import wait_for, write_config
from tests.gateway.publisher import publish
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]


@dataclass(frozen=True)
class _Cluster:
    index: int
    url: str
    service_id: str


@dataclass(frozen=True)
class _Platform:
    key_id: str
    public_hex: str


async def test_readings_reach_the_real_parties(tmp_path: Path, keys: GatewayKeys) -> None:
    """Readings published on MQTT are attested, sealed, uploaded and accepted by both parties."""
    (tmp_path / "cloud").mkdir()
    dep = Deployment(tmp_path / "cloud", POLICY, {"gw-test": keys.identity})
    try:
        await asyncio.to_thread(dep.start_all)
        plat = [
            _Platform(dep.platform(n).key_id, dep.platform(n).public_key_hex)
            for n in ("party0", "party1")
        ]
        clusters = [_Cluster(i, dep.url(f"party{i}"), f"party{i}") for i in (0, 1)]
        with mosquitto(tmp_path / "mq") as broker:
            cfg = write_config(
                tmp_path,
                clusters=clusters,
                platform=plat,
                mqtt_port=broker.port,
                measurement=dep.measurement(),
            )
            async with running(cfg, keys) as agent:
                await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
                msgs = [("plant/line1/temp/value", str(20 + i / 100).encode()) for i in range(300)]
                await asyncio.to_thread(publish, broker.port, msgs)

                def accepted(name: str) -> float:
                    return metric(dep, name, "tecc_ingest_readings_total")

                await wait_for(
                    lambda: accepted("party0") == 300 and accepted("party1") == 300,
                    30,
                    "both parties to accept every reading",
                )
                await wait_for(
                    lambda: agent.spool.depth(0) == agent.spool.depth(1) == 0, 10, "spool drained"
                )
                health = agent.health()[1]
    finally:
        await asyncio.to_thread(dep.stop_all)
    assert all(c["attested"] for c in health["clusters"].values())
