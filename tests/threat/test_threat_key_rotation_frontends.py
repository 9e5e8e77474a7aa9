"""Cluster HPKE key rotation in the JetStream layout while a real gateway is sending.

Both parties run the JetStream layout (embedded node, a shard worker, two
ingest frontends); the frontends of each party share its key ring and
rotate it every 3 s. The gateway agent (real MQTT broker, real spool) lists
both frontends of each cluster (``urls:``) and keeps publishing; it follows
every rotation under attestation at whichever frontend it reaches, and every
reading reaches both parties exactly once. Fails on the code before this
change: ``hpke_rotation_s`` with ``jetstream:`` was refused at load.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.cloud.services import Deployment, metric
from tests.gateway.harness import real_cluster_config
from tests.gateway.services import mosquitto
from tests.jetstream.logstack import start_frontends

from .test_threat_key_rotation import rotating_deployment, send_while_rotating

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]


class Seen(NamedTuple):
    """What one party's two frontends counted."""

    versions: list[float]
    rotations: list[float]
    rejected: float
    batches: float
    readings: float


def _versions(dep: Deployment, fes: list[str]) -> list[float]:
    return [metric(dep, fe, "tecc_hpke_ring_version") for fe in fes]


async def test_frontends_rotate_while_a_gateway_sends(tmp_path: Path) -> None:
    keys, dep = rotating_deployment(tmp_path, jetstream={"embedded": True})
    try:
        await asyncio.to_thread(dep.start_all)
        fes = {p: [dep.add_frontend(p) for _ in range(2)] for p in dep.parties}
        every = [fe for pair in fes.values() for fe in pair]
        await asyncio.to_thread(start_frontends, dep, every)
        with mosquitto(tmp_path / "mq") as broker:
            cfg = real_cluster_config(tmp_path, dep, broker.port)
            doc = yaml.safe_load(cfg.read_text())
            for cluster, party in zip(doc["clusters"], dep.parties, strict=True):
                del cluster["url"]
                cluster["urls"] = [dep.url(fe) for fe in fes[party]]
            cfg.write_text(yaml.safe_dump(doc))
            start = {p: await asyncio.to_thread(_versions, dep, fes[p]) for p in dep.parties}

            def accepted(party: str) -> float:
                return sum(metric(dep, fe, "tecc_ingest_readings_total") for fe in fes[party])

            total, first, pins, sent = await send_while_rotating(
                cfg,
                keys,
                broker.port,
                lambda total: all(accepted(p) == total for p in dep.parties),
                "both parties' frontends to accept every reading",
            )
        counts = {}
        for p in dep.parties:
            pair = fes[p]
            counts[p] = Seen(
                versions=await asyncio.to_thread(_versions, dep, pair),
                rotations=[metric(dep, fe, "tecc_hpke_rotations_total") for fe in pair],
                rejected=sum(metric(dep, fe, "tecc_ingest_rejected_total") for fe in pair),
                batches=sum(
                    metric(dep, fe, 'tecc_ingest_batches_total{outcome="accepted"}') for fe in pair
                ),
                readings=accepted(p),
            )
    finally:
        await asyncio.to_thread(dep.stop_all)
    print(f"ring versions at the start {start}; per party: {counts}; gateway sent {sent}")
    for p, c in counts.items():
        v = c.versions
        assert v[0] == v[1], p  # both frontends of the party on one ring
        assert v[0] - start[p][0] >= 2, p  # through at least two rotations while sending
        assert sum(c.rotations) == v[0] - 1, p  # each version written by one frontend
        assert c.rejected == 0, p
        assert c.readings == total, p
    assert counts["party0"].batches + counts["party1"].batches == sum(sent.values())
    assert first
    assert all(pins[i] != first[i] for i in (0, 1))
