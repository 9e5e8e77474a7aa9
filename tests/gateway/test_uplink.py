"""Uplink behaviour: attestation gates every share; outages queue and drain."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.publisher import publish
from tests.gateway.receiver import (
    BAD_MEASUREMENT,
    Answers,
    FakeCluster,
    Platform,
    progress_violations,
    readings,
)
from tests.gateway.services import mosquitto

pytestmark = pytest.mark.mqtt
OUTAGE_S = float(os.environ.get("GATEWAY_TEST_OUTAGE_S", "5"))
T = "plant/line1/temp/value"


def _msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    """Messages whose values (i / 100) are distinct and inside the sensor range."""
    return [(T, str((start + i) / 100).encode()) for i in range(n)]


def _ids(clusters: list[FakeCluster]) -> list[int]:
    return sorted(round(v * 100) for _, _, v in readings(clusters))


async def test_wrong_measurement_gets_nothing(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A cluster whose measurement is not allow-listed receives no share at all."""
    clusters[1].measurement = BAD_MEASUREMENT
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 20))
            await wait_for(lambda: clusters[1].attestations >= 2, 10, "re-attestation attempts")
            text = await scrape(agent.cfg.http.port)
            ok, health = agent.health()
    assert clusters[1].posts == 0
    assert clusters[0].posts == 0
    assert metric(text, "gateway_attestation_failures_total", cluster="1") >= 2
    assert metric(text, "gateway_cluster_attested", cluster="1") == 0
    assert "not on the allow-list" in str(health["clusters"]["1"]["last_error"])
    assert ok  # degraded, not dead: readings wait for the cluster


async def test_unknown_platform_and_rekey_are_refused(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """After pinning, a cluster with a new key or another platform gets nothing; others do."""
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 10))
            await wait_for(lambda: len(readings(clusters)) == 10, 10, "first readings")
            await clusters[1].stop()
            impostor = FakeCluster(1, clusters[1].port, Platform(), {})  # other platform
            await impostor.start()
            rekeyed = FakeCluster(1, clusters[1].port, platform, {})  # right platform, new key
            try:
                await asyncio.to_thread(publish, broker.port, _msgs(100, 10))
                await wait_for(lambda: impostor.attestations >= 1, 10, "impostor attested")
                await wait_for(lambda: len(clusters[0].shares) >= 2, 10, "cluster 0 continues")
                await impostor.stop()
                await rekeyed.start()
                await wait_for(lambda: rekeyed.attestations >= 1, 10, "re-keyed attested")
                await asyncio.sleep(0.5)
                health = agent.health()[1]
                text = await scrape(agent.cfg.http.port)
            finally:
                await impostor.stop()
                await rekeyed.stop()
    assert impostor.posts == 0
    assert rekeyed.posts == 0
    assert "different HPKE key" in str(health["clusters"]["1"]["last_error"])
    assert metric(text, "gateway_attestation_failures_total", cluster="1") >= 2
    assert agent.spool.depth(1) >= 1  # queued for the genuine cluster, not dropped


async def test_cluster_outage_queues_then_drains(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A cluster down for OUTAGE_S seconds loses nothing and its spool drains on return."""
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 100))
            await wait_for(lambda: len(readings(clusters)) == 100, 10, "before outage")
            await clusters[1].stop()
            sent = 100
            deadline = asyncio.get_running_loop().time() + OUTAGE_S
            while asyncio.get_running_loop().time() < deadline:
                await asyncio.to_thread(publish, broker.port, _msgs(sent, 50))
                sent += 50
                await asyncio.sleep(0.2)
            assert agent.spool.depth(1) > 0
            # cluster 0 keeps up (its spool empties; the last batch may still be in flight)
            await wait_for(lambda: agent.spool.depth(0) == 0, 10, "cluster 0 drained")
            backlog = agent.spool.depth(1)
            notices_down = len(clusters[1].notices)
            await clusters[1].start()
            await wait_for(lambda: agent.spool.depth(1) == 0, 30, "spool to drain")
            await wait_for(lambda: len(readings(clusters)) == sent, 10, "all readings")
            newest = max(t for _, t, _ in readings(clusters))
            for c in clusters:  # both declare, in the end, everything delivered
                await wait_for(lambda c=c: c.notices[-1][0] > newest, 10, "progress past the end")
            text = await scrape(agent.cfg.http.port)
    assert _ids(clusters) == list(range(sent))  # nothing lost, nothing twice
    # Progress notices never overtook a reading, although cluster 1 was away:
    assert progress_violations(clusters[0]) == progress_violations(clusters[1]) == []
    assert len(clusters[1].notices) > notices_down > 0
    assert backlog >= 5
    assert metric(text, "gateway_uplink_errors_total", cluster="1", kind="transport") >= 1
    assert metric(text, "gateway_uplink_batches_sent_total", cluster="1") == len(clusters[1].shares)


@pytest.mark.parametrize(
    "answers",
    [Answers.BARE_200, Answers.BARE_409, Answers.FORGED, Answers.WRONG_DIGEST],
    ids=lambda a: a.value,
)
async def test_unsigned_acknowledgements_never_drop_a_frame(
    tmp_path: Path,
    keys: GatewayKeys,
    platform: Platform,
    clusters: list[FakeCluster],
    answers: Answers,
) -> None:
    """An on-path responder answering 200/409 without a valid signed ack loses nothing.

    Fails on the code before this change: there any 2xx, or a 409 with a non-JSON
    body, deleted the frame from the spool, and the readings were never delivered.
    The frames stay spooled, each answer is counted as a bad acknowledgement, and
    once the genuine cluster answers again every reading arrives exactly once.
    """
    clusters[1].answers = answers
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 30))
            await wait_for(lambda: clusters[1].posts >= 3, 10, "answers from the forger")
            await wait_for(lambda: len(clusters[0].shares) >= 1, 10, "cluster 0 served")
            text = await scrape(agent.cfg.http.port)
            depth = agent.spool.depth(1)
            clusters[1].answers = Answers.GENUINE
            await wait_for(lambda: agent.spool.depth(1) == 0, 30, "spool to drain")
            await wait_for(lambda: len(readings(clusters)) == 30, 10, "all readings")
    assert depth >= 1  # nothing deleted on the forged answers
    kind = "refused" if answers is Answers.BARE_409 else "bad_ack"
    assert metric(text, "gateway_uplink_errors_total", cluster="1", kind=kind) >= 3
    bad_acks = metric(text, "gateway_uplink_bad_acks_total", cluster="1")
    assert bad_acks == 0 if answers is Answers.BARE_409 else bad_acks >= 3
    assert metric(text, "gateway_uplink_batches_sent_total", cluster="1") == 0
    assert _ids(clusters) == list(range(30))  # nothing lost, nothing twice


async def test_a_quote_without_an_ack_key_gets_nothing(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """A cluster whose quote binds no 'sign' key cannot acknowledge, so it gets no frame."""
    clusters[1].bind_sign_key = False
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 10))
            await wait_for(lambda: clusters[1].attestations >= 2, 10, "re-attestation attempts")
            ok, health = agent.health()
            pins = agent.spool.pins()
    assert clusters[1].posts == 0
    assert "binds no Ed25519 'sign' key" in str(health["clusters"]["1"]["last_error"])
    assert 1 not in pins  # its key is not pinned: readings wait, unsealed
    assert ok
