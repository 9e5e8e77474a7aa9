"""SIGHUP reloads sensors and sources of a running agent (real processes, swtpm, mosquitto).

The clusters are down while the config changes, so the spool holds frames
across the reload; an MQTT publisher streams throughout, so messages are in
flight when the MQTT source reconnects with its new topics. Afterwards every
reading arrives exactly once, the new sensor's readings too, and a broken file
is refused while the agent keeps running. (A reconnect that starts the MQTT
source with a fresh delivery ledger fails the exactly-once assertion: values
counted twice.)
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from demo.services import free_port
from gateway.keys import PUBLIC_FILE
from tests.gateway.harness import cli, health, metric, scrape, spawn, terminate, wait_for
from tests.gateway.harness import write_config as gateway_config
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto, swtpm
from tests.gateway.test_crash import Stream

pytestmark = [pytest.mark.mqtt, pytest.mark.tpm, pytest.mark.processes, pytest.mark.slow]


async def _ready(port: int) -> bool:
    h = await health(port)
    return bool(
        h
        and h["sources"]["mq"]["connected"]
        and h["sealing"]
        and all(c["attested"] for c in h["clusters"].values())
    )


async def _depths(port: int) -> list[int]:
    h = await health(port)
    return [h["clusters"][k]["depth"] for k in sorted(h["clusters"])]


async def test_sighup_adds_a_sensor_keeps_the_spool_and_refuses_a_broken_file(
    tmp_path: Path,
) -> None:
    """Add a sensor and a topic rule by SIGHUP: spool kept, exactly once, bad file refused."""
    platform = Platform()
    with swtpm(tmp_path / "tpm") as sw, mosquitto(tmp_path / "mq") as broker:
        ports = [free_port(), free_port()]
        placeholder = [FakeCluster(i, ports[i], platform, {}) for i in range(2)]
        cfg = gateway_config(
            tmp_path, clusters=placeholder, platform=platform, tcti=sw.tcti,
            mqtt_port=broker.port, max_delay_s=0.05,
        )  # fmt: skip
        assert cli("provision", "--config", str(cfg)).returncode == 0
        pub = bytes.fromhex((tmp_path / "state" / PUBLIC_FILE).read_text().strip())
        gw = {"gw-test": Ed25519PublicKey.from_public_bytes(pub)}
        clusters = [FakeCluster(i, ports[i], platform, gw) for i in range(2)]
        for c in clusters:
            await c.start()
        doc = yaml.safe_load(cfg.read_text())
        http = int(doc["http"]["port"])
        proc = spawn(cfg, tmp_path / "gateway.log")
        try:
            await wait_for(lambda: _ready(http), 30, "agent ready")
            for c in clusters:
                await c.stop()  # outage: from now on batches stay in the spool
            stream = Stream(broker.port)
            stream.start()
            await wait_for(lambda: _spooled(http), 20, "batches held in the spool")
            before = await _depths(http)
            doc["sensors"].append({"id": "line1.flow", "range": [0, 100]})
            doc["sources"]["mqtt"][0]["topics"].append(
                {"filter": "extra/+", "sensor_template": "line1.{0}", "format": "number"}
            )
            cfg.write_text(yaml.safe_dump(doc))
            os.kill(proc.pid, signal.SIGHUP)
            await wait_for(lambda: _reloads(http, "ok", 1), 20, "reload applied")
            after = await _depths(http)
            assert all(a >= b for a, b in zip(after, before, strict=True))  # nothing dropped
            await wait_for(lambda: _ready_mqtt(http), 20, "mqtt reconnected")
            flows = [("extra/flow", f"{i / 10}".encode()) for i in range(50)]
            flows += [("plant/line1/flow/value", f"{50 + i / 10}".encode()) for i in range(20)]
            await asyncio.to_thread(publish, broker.port, flows)
            await asyncio.sleep(0.5)
            sent = stream.stop()
            doc["sensors"][2]["range"] = [100, 0]  # low > high: the schema refuses it
            cfg.write_text(yaml.safe_dump(doc))
            os.kill(proc.pid, signal.SIGHUP)
            await wait_for(lambda: _reloads(http, "refused", 1), 20, "broken file refused")
            assert proc.poll() is None  # still running on the old config
            for c in clusters:
                await c.start()
            await wait_for(lambda: _arrived(clusters, sent), 60, "every reading after the outage")
            await asyncio.to_thread(publish, broker.port, [("extra/flow", b"99.5")])
            await wait_for(
                lambda: sum(s == "line1.flow" for s, _, _ in readings(clusters)) == 71,
                20,
                "a reading after the refused reload",
            )
        finally:
            code = terminate(proc)
            for c in clusters:
                await c.stop()
    assert code == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "config reload refused" in log
    assert "$.sensors[2]" in log  # the key path of the broken entry
    temps = Counter(round(v * 100) for s, _, v in readings(clusters) if s == "line1.temp")
    assert sorted(temps) == list(range(sent))  # every value ...
    assert set(temps.values()) == {1}  # ... exactly once across the MQTT reconnect
    flows_seen = sorted(round(v * 10) for s, _, v in readings(clusters) if s == "line1.flow")
    assert flows_seen == [*range(50), *range(500, 520), 995]


async def _spooled(port: int) -> bool:
    return min(await _depths(port)) >= 3


async def _reloads(port: int, outcome: str, n: int) -> bool:
    return metric(await scrape(port), "gateway_config_reloads_total", outcome=outcome) == n


async def _ready_mqtt(port: int) -> bool:
    h = await health(port)
    return bool(h and h["sources"]["mq"]["connected"])


def _arrived(clusters: list[FakeCluster], sent: int) -> bool:
    got = readings(clusters)
    return sum(s == "line1.temp" for s, _, _ in got) >= sent and (
        sum(s == "line1.flow" for s, _, _ in got) >= 70
    )
