"""SIGKILL the agent mid-stream and restart it: nothing spooled is lost, nothing doubles."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from demo.services import free_port
from gateway.keys import PUBLIC_FILE
from tests.gateway.harness import cli, health, kill9, spawn, terminate, wait_for, write_config
from tests.gateway.plc import Plc
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto, swtpm

pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.opcua,
    pytest.mark.tpm,
    pytest.mark.processes,
    pytest.mark.slow,
]
TOPIC = "plant/line1/temp/value"


class Stream:
    """Publishes value i/100 for i = 0, 1, 2 … at QoS 1 from a thread until stopped."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._infos: list[Any] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(20):
                self._infos.append(self.client.publish(TOPIC, str(self.sent / 100), qos=1))
                self.sent += 1
            time.sleep(0.01)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        for info in self._infos:
            info.wait_for_publish(timeout=30)
        self.client.disconnect()
        self.client.loop_stop()
        return self.sent


async def _ready(port: int) -> bool:
    h = await health(port)
    if not h:
        return False
    clusters = h["clusters"].values()
    return bool(
        h["sources"]["mq"]["connected"]
        and h["sources"]["plc"]["subscribed"] == 3
        and all(c["attested"] for c in clusters)
        and h["sealing"]
    )


async def test_sigkill_and_restart_exactly_once(tmp_path: Path) -> None:
    """Kill -9 mid-stream; after restart every MQTT value arrives once, OPC-UA values too."""
    platform = Platform()
    plc = Plc(3)
    await plc.start()
    with swtpm(tmp_path / "tpm") as sw, mosquitto(tmp_path / "mq") as broker:
        ports = [free_port(), free_port()]
        placeholder = [FakeCluster(i, ports[i], platform, {}) for i in range(2)]
        cfg = write_config(
            tmp_path,
            clusters=placeholder,
            platform=platform,
            tcti=sw.tcti,
            mqtt_port=broker.port,
            opcua_url=plc.url,
            opcua_nodes=3,
            max_delay_s=0.05,
        )
        assert cli("provision", "--config", str(cfg)).returncode == 0
        pub = bytes.fromhex((tmp_path / "state" / PUBLIC_FILE).read_text().strip())
        gw = {"gw-test": Ed25519PublicKey.from_public_bytes(pub)}
        clusters = [FakeCluster(i, ports[i], platform, gw) for i in range(2)]
        for c in clusters:
            await c.start()
        http_port = int(yaml.safe_load(cfg.read_text())["http"]["port"])
        log = tmp_path / "gateway.log"
        proc = spawn(cfg, log)
        try:
            await wait_for(lambda: _ready(http_port), 30, "first agent ready")
            stream = Stream(broker.port)
            stream.start()
            counter = 0.0
            for _ in range(30):  # ~1.5 s of streaming on both sources
                counter += 1
                for i in range(3):
                    await plc.write(i, counter)
                await asyncio.sleep(0.05)
            kill9(proc)
            killed_at = stream.sent
            for _ in range(20):  # keep changing while the agent is dead
                counter += 1
                for i in range(3):
                    await plc.write(i, counter)
                await asyncio.sleep(0.05)
            proc = spawn(cfg, log)
            await wait_for(lambda: _ready(http_port), 30, "restarted agent ready")
            after_restart: list[float] = []
            for _ in range(30):
                counter += 1
                for i in range(3):
                    await plc.write(i, counter)
                after_restart.append(counter)
                await asyncio.sleep(0.05)
            total = stream.stop()
            await wait_for(
                lambda: sum(1 for s, _, _ in readings(clusters) if s == "line1.temp") >= total,
                30,
                "all MQTT readings",
            )
            await asyncio.sleep(0.5)
            assert terminate(proc) == 0
        finally:
            if proc.poll() is None:
                kill9(proc)
            for c in clusters:
                await c.stop()
            await plc.stop()
    got = readings(clusters)
    mqtt_ids = Counter(round(v * 100) for s, _, v in got if s == "line1.temp")
    assert killed_at > 100
    assert total > killed_at
    assert sorted(mqtt_ids) == list(range(total)), "an MQTT reading was lost"
    assert max(mqtt_ids.values()) == 1, "an MQTT reading was delivered twice"
    for i in range(3):
        seen = [(ts, v) for s, ts, v in got if s == f"line2.v{i}"]
        assert len(seen) == len(set(seen)), "an OPC-UA change was delivered twice"
        values = [v for _, v in sorted(seen)]
        assert values[-len(after_restart) :] == after_restart
    assert "refusing" not in log.read_text()
