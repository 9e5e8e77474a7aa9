"""Cluster HPKE key rotation while a real gateway is sending.

Both parties rotate their HPKE key every 3 s (``hpke_rotation_s``) and keep
the previous one for ``hpke_overlap_s``; the gateway agent (real MQTT broker,
real spool) keeps publishing. It follows each rotation under attestation (the
quote names the key it replaced), and every reading reaches both parties
exactly once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.agent import Agent
from gateway.keys import GatewayKeys
from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment, metric
from tests.gateway.conftest import running
from tests.gateway.harness import real_cluster_config, wait_for
from tests.gateway.publisher import publish
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]


async def test_rotation_while_sending_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Keys rotate several times during the upload; every reading counted once, none refused.

    Fails on the code before this change: there was no rotation, and a gateway
    refused any HPKE key other than the one it pinned first.
    """
    keys, dep = rotating_deployment(tmp_path)
    try:
        await asyncio.to_thread(dep.start_all)
        with mosquitto(tmp_path / "mq") as broker:
            cfg = real_cluster_config(tmp_path, dep, broker.port)

            def accepted(name: str) -> float:
                return metric(dep, name, "tecc_ingest_readings_total")

            total, first, pins, sent = await send_while_rotating(
                cfg,
                keys,
                broker.port,
                lambda total: accepted("party0") == total and accepted("party1") == total,
                "both parties to accept every reading",
            )
        counts = {
            n: (
                metric(dep, n, "tecc_hpke_rotations_total"),
                metric(dep, n, "tecc_ingest_rejected_total"),
                metric(dep, n, 'tecc_ingest_batches_total{outcome="accepted"}'),
                accepted(n),
            )
            for n in ("party0", "party1")
        }
    finally:
        await asyncio.to_thread(dep.stop_all)
    print(f"rotations/rejected/batches/readings per party: {counts}; gateway sent {sent}")
    for n, (rotations, rejected, _batches, readings) in counts.items():
        assert rotations >= 3, n
        assert rejected == 0, n
        assert readings == total, n
    assert counts["party0"][2] + counts["party1"][2] == sum(sent.values())  # each batch once
    assert first
    assert all(pins[i] != first[i] for i in (0, 1))


def rotating_deployment(tmp_path: Path, **party_extra: Any) -> tuple[GatewayKeys, Deployment]:
    """A gateway's keys and a deployment in ``tmp_path/cloud`` that admits it, whose parties
    rotate their HPKE key every 3 s and keep the previous one for 60 s (plus ``party_extra``)."""
    keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
    (tmp_path / "cloud").mkdir()
    dep = Deployment(
        tmp_path / "cloud",
        POLICY,
        {"gw-test": keys.identity},
        party_extra={**party_extra, "hpke_rotation_s": 3.0, "hpke_overlap_s": 60.0},
    )
    return keys, dep


class Sent(NamedTuple):
    """What a gateway sent while the keys rotated."""

    total: int  # readings published
    first: dict[int, bytes]  # the first HPKE key pinned per cluster
    pins: dict[int, bytes]  # the keys pinned once every reading was accepted
    sent: dict[int, float]  # envelopes acknowledged per cluster


async def send_while_rotating(
    cfg: Path, keys: GatewayKeys, port: int, all_accepted: Callable[[int], bool], what: str
) -> Sent:
    """Run a gateway for ``cfg`` that publishes 12 bursts of 30 readings a second apart to
    the broker at ``port``, then waits until ``all_accepted(total)`` and its spool drains."""
    bursts, per_burst = 12, 30
    async with running(cfg, keys) as agent:
        await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
        first: dict[int, bytes] = {}
        for b in range(bursts):
            msgs = [
                ("plant/line1/temp/value", str(20 + (b * per_burst + i) / 100).encode())
                for i in range(per_burst)
            ]
            await asyncio.to_thread(publish, port, msgs)
            if not first and len(agent.spool.pins()) == 2:
                first = {i: p.public_key for i, p in agent.spool.pins().items()}
            await asyncio.sleep(1.0)  # idle: the gateway re-attests on new work
        total = bursts * per_burst
        await wait_for(lambda: all_accepted(total), 60, what)
        await wait_for(
            lambda: agent.spool.depth(0) == agent.spool.depth(1) == 0, 10, "spool drained"
        )
        pins = {i: p.public_key for i, p in agent.spool.pins().items()}
        return Sent(total, first, pins, metric_gateway(agent))


def metric_gateway(agent: Agent) -> dict[int, float]:
    """Envelopes the gateway's uplinks sent (acknowledged by the cluster), per cluster."""
    reg = agent.metrics.registry
    return {
        i: reg.get_sample_value("gateway_uplink_batches_sent_total", {"cluster": str(i)}) or 0.0
        for i in (0, 1)
    }
