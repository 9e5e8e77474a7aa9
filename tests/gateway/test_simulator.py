"""The shipped example config against the real simulator (firmware_sim) process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from demo.services import free_port
from gateway.keys import GatewayKeys
from tests.gateway.conftest import running
from tests.gateway.harness import ROOT, wait_for
from tests.gateway.receiver import GOOD_MEASUREMENT, FakeCluster, Platform, readings
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.opcua, pytest.mark.processes, pytest.mark.slow]


def _start_sim(mqtt_port: int, opc_port: int, tmp: Path) -> subprocess.Popen[bytes]:
    """Run the simulator with configs/sim.yaml against the test broker and port."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firmware_sim",
            "run",
            "--config",
            str(ROOT / "configs" / "sim.yaml"),
            "--duration",
            "30",
            "--quiet",
            "--mqtt-port",
            str(mqtt_port),
            "--opcua-port",
            str(opc_port),
            "--state-dir",
            str(tmp / "sim"),
            "--groundtruth",
            str(tmp / "gt.jsonl"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_example_config_ingests_every_simulated_sensor(
    tmp_path: Path, keys: GatewayKeys, platform: Platform
) -> None:
    """configs/gateway.yaml + configs/sim.yaml: all 15 sensors arrive, in range, shared."""
    gw = {"gw-demo": keys.identity.public_key()}
    clusters = [FakeCluster(i, free_port(), platform, gw) for i in range(2)]
    for c in clusters:
        await c.start()
    opc_port = free_port()
    doc = yaml.safe_load((ROOT / "configs" / "gateway.yaml").read_text())
    doc["state_dir"] = str(tmp_path / "state")
    doc["spool"]["path"] = str(tmp_path / "state" / "spool.db")
    doc["sources"]["opcua"][0]["url"] = f"opc.tcp://127.0.0.1:{opc_port}/tecc/sim"
    doc["clusters"] = [
        {"index": c.index, "url": c.url, "service_id": c.service_id} for c in clusters
    ]
    doc["attestation"] = {
        "platform_keys": {platform.key_id: platform.public_hex},
        "allowed_measurements": [GOOD_MEASUREMENT.hex()],
    }
    doc["http"]["port"] = free_port()
    try:
        with mosquitto(tmp_path / "mq") as broker:
            doc["sources"]["mqtt"][0]["port"] = broker.port
            cfg = tmp_path / "gateway.yaml"
            cfg.write_text(yaml.safe_dump(doc))
            sim = _start_sim(broker.port, opc_port, tmp_path)
            try:
                async with running(cfg, keys) as agent:

                    def sensors() -> set[str]:
                        return {s for s, _, _ in readings(clusters)}

                    await wait_for(lambda: len(sensors()) == 15, 40, "all 15 sensors")
                    await asyncio.sleep(1)
            finally:
                sim.terminate()
                sim.wait(10)
    finally:
        for c in clusters:
            await c.stop()
    got = readings(clusters)
    ranges = {s["id"]: s["range"] for s in doc["sensors"]}
    assert all(ranges[s][0] <= v <= ranges[s][1] for s, _, v in got)
    assert agent.ingest.accepted["sensors"] > 0
    assert agent.ingest.accepted["plc-line1"] > 0
