"""Hostile MQTT payloads are counted by reason, never reach a share, never stop the agent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import metric, scrape, wait_for, write_config
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto

pytestmark = pytest.mark.mqtt

T = "plant/line1/temp/value"
J = "plant/line1/temp/json"
B = "plant/line1/temp/batch"
BAD: list[tuple[str, bytes, str]] = [
    (T, b"warm", "not_numeric"),
    (T, b"", "not_numeric"),
    (T, b"NaN", "nan"),
    (T, b"nan", "nan"),
    (T, b"Infinity", "infinite"),
    (T, b"-inf", "infinite"),
    (T, b"1e308", "above_range"),
    (T, b"-1e300", "below_range"),
    (T, b"151", "above_range"),
    (T, b"\xff\xfe\xfa", "invalid_utf8"),
    (T, b"7" * (1 << 20), "too_large"),
    (J, b'{"value": 20}', "missing_field"),
    (J, b'{"v": "20"}', "not_numeric"),
    (J, b'{"v": NaN}', "nan"),
    (J, b'{"v": 1' + b"0" * 400 + b"}", "above_range"),
    (J, b'{"v": 20, "ts": "yesterday"}', "bad_timestamp"),
    (J, b"{not json", "invalid_json"),
    (J, b"\xc3\x28", "invalid_utf8"),
    (B, b'{"v": 1}', "wrong_shape"),
    (B, b'[{"v": null}, "x", {"q": 1}]', "not_numeric"),
    ("plant/nowhere/thing/value", b"1", "unknown_sensor"),
]


async def test_bad_payloads_are_counted_and_excluded(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """Every bad payload is rejected under its reason; good readings around them still flow."""
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt to connect")
            good = [(T, b"21.5"), (J, json.dumps({"v": 22.5}).encode()), (B, b"[23.5, 24.5]")]
            msgs = [*good[:1], *[(t, p) for t, p, _ in BAD], *good[1:]]
            await asyncio.to_thread(publish, broker.port, msgs)
            await wait_for(lambda: len(readings(clusters)) >= 4, 15, "good readings")
            await asyncio.sleep(0.3)
            text = await scrape(agent.cfg.http.port)
            assert agent.mqtt[0].connected
    values = sorted(v for _, _, v in readings(clusters))
    assert values == [21.5, 22.5, 23.5, 24.5]
    expected: dict[str, int] = {}
    for _, _, reason in BAD:
        expected[reason] = expected.get(reason, 0) + 1
    expected["not_numeric"] += 0  # the batch above holds one null (not_numeric) ...
    expected["wrong_shape"] += 1  # ... one bare string (wrong_shape) ...
    expected["missing_field"] += 1  # ... and one object without the field
    for reason, n in expected.items():
        assert metric(text, "gateway_readings_rejected_total", reason=reason) == n, reason
    assert metric(text, "gateway_readings_rejected_total", sensor="(undeclared)") == 1
    assert metric(text, "gateway_readings_total", source="mq") == 4


async def test_undeclared_topics_do_not_grow_the_metrics(
    tmp_path: Path, keys: GatewayKeys, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """3,000 distinct topics of undeclared sensors add no metric series and no route entry.

    Fails on the code before this change: each topic became a permanent
    ``gateway_readings_rejected_total{sensor=...}`` series (85,545 topics grew
    ``/metrics`` to 10 MB) and a route-cache entry.
    """
    with mosquitto(tmp_path / "mq") as broker:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, mqtt_port=broker.port)
        async with running(cfg, keys) as agent:
            await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt to connect")
            before = await scrape(agent.cfg.http.port)
            junk = [(f"plant/rogue{i}/x{i}/value", b"1.0") for i in range(3000)]
            await asyncio.to_thread(publish, broker.port, [*junk, (T, b"20.0")])
            await wait_for(lambda: len(readings(clusters)) == 1, 15, "the good reading")
            text = await scrape(agent.cfg.http.port)
            routes = len(agent.mqtt[0]._routes)

    def series(t: str) -> int:
        return sum(1 for ln in t.splitlines() if ln.startswith("gateway_readings_rejected"))

    assert metric(text, "gateway_readings_rejected_total", sensor="(undeclared)") == 3000
    assert series(text) - series(before) <= 4  # one label (+ its _created sample)
    assert len(text) < 20_000
    assert routes <= 1
