"""The agent against the real TECC cluster services (two parties, dealer, output).

Includes the re-seal case: different bytes under a delivered seq are refused by
the real parties as a replay, which the uplink never counts as delivered.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.keys import GatewayKeys
from gateway.uplink import AckCheck, Answer, judge_answer
from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment, TestGateway, metric, segment
from tests.gateway.conftest import running
from tests.gateway.harness import real_cluster_config, wait_for
from tests.gateway.publisher import publish
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]


async def test_readings_reach_the_real_parties(tmp_path: Path, keys: GatewayKeys) -> None:
    """Readings published on MQTT are attested, sealed, uploaded and accepted by both parties."""
    (tmp_path / "cloud").mkdir()
    dep = Deployment(tmp_path / "cloud", POLICY, {"gw-test": keys.identity})
    try:
        await asyncio.to_thread(dep.start_all)
        with mosquitto(tmp_path / "mq") as broker:
            cfg = real_cluster_config(tmp_path, dep, broker.port)
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
                delivered = agent.spool.last_seq()
                replay = await asyncio.to_thread(_reseal, dep, delivered)
                readings_after = [accepted("party0"), accepted("party1")]
    finally:
        await asyncio.to_thread(dep.stop_all)
    assert all(c["attested"] for c in health["clusters"].values())
    # The re-seal case: other bytes under a seq the parties hold are refused as a replay
    # (and never acknowledged by the uplink); the identical frame again is a duplicate.
    assert replay["resealed"] == [(409, "replay"), (409, "replay")]
    assert replay["acknowledged"] == [False, False]
    assert replay["fresh"] == [(200, "accepted"), (200, "accepted")]
    assert replay["again"] == [(200, "duplicate"), (200, "duplicate")]
    assert readings_after == [300 + 2, 300 + 2]  # only the fresh batch was counted


def _reseal(dep: Deployment, delivered: int) -> dict[str, list[Any]]:
    """Seal new content under ``delivered`` with the gateway's own key; a fresh seq twice."""
    gw = TestGateway(dep, "gw-test")
    seg = [segment("line1.temp", np.array([1, 2]) + time.time_ns(), np.array([1.0, 2.0]))]
    out: dict[str, list[Any]] = {}
    answers = gw.upload(gw.seal(delivered, seg))
    out["resealed"] = [(st, body.get("reason")) for st, body in answers]
    check = AckCheck(
        gateway_id="gw-test", cluster_id="", key=Ed25519PrivateKey.generate().public_key()
    )
    out["acknowledged"] = [
        judge_answer(st, json.dumps(body).encode(), check=check, seq=delivered, frame=b"")[0]
        is Answer.ACKED
        for st, body in answers
    ]
    frames = gw.seal(delivered + 10_000, seg)
    out["fresh"] = [(st, body.get("status")) for st, body in gw.upload(frames)]
    out["again"] = [(st, body.get("status")) for st, body in gw.upload(frames)]
    return out
