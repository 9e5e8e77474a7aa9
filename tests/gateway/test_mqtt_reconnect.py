"""A broker restart mid-stream: the agent reconnects, nothing is lost or doubled."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, progress_violations, readings
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
T = "plant/line1/temp/value"


def _msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    return [(T, str((start + i) / 100).encode()) for i in range(n)]


@pytest.mark.parametrize(
    ("max_delay_s", "max_readings"),
    [
        pytest.param(2.0, 20_000, id="acked-while-disconnected"),
        pytest.param(6.0, 20_000, id="still-batching-at-reconnect"),
        pytest.param(2.0, 400, id="many-small-batches-around-the-drop"),
    ],
)
async def test_broker_restart_exactly_once(
    tmp_path: Path,
    keys: GatewayKeys,
    platform: Platform,
    clusters: list[FakeCluster],
    max_delay_s: float,
    max_readings: int,
) -> None:
    """Messages the broker resends after its restart are neither lost nor spooled twice.

    With a short batch delay the readings are spooled (and their PUBACKs lost)
    before the agent reconnects; with a long one they are still in the batcher
    when the broker resends them.
    """
    with mosquitto(tmp_path / "mq") as broker:
        port = broker.port
        cfg = write_config(
            tmp_path,
            clusters=clusters,
            platform=platform,
            mqtt_port=port,
            max_delay_s=max_delay_s,
            max_readings=max_readings,
        )
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
            await asyncio.to_thread(publish, port, _msgs(0, 3000))
            broker.process.terminate()  # mid-stream: some offered, some spooled, some in flight
            broker.process.wait(10)
            await wait_for(lambda: not agent.mqtt[0].connected, 10, "disconnect noticed")
            with mosquitto(tmp_path / "mq", port=port):
                await wait_for(lambda: agent.mqtt[0].connected, 20, "reconnected")
                await asyncio.to_thread(publish, port, _msgs(3000, 1000))
                await wait_for(lambda: len(readings(clusters)) >= 4000, 30, "all readings")
                await asyncio.sleep(0.5)
                text = await scrape(agent.cfg.http.port)
    ids = Counter(round(v * 100) for _, _, v in readings(clusters))
    assert sorted(ids) == list(range(4000))
    assert max(ids.values()) == 1
    assert metric(text, "gateway_source_errors_total", source="mq") >= 1
    assert agent.mqtt[0].duplicates > 0  # the broker did resend; they were recognised
    assert all(c.notices for c in clusters)
    assert progress_violations(clusters[0]) == progress_violations(clusters[1]) == []
