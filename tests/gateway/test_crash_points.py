"""Deterministic crashes at named points (TECC_CRASH_AT), then exactly once after restart.

Unlike the SIGKILL test (test_crash.py), whose kill lands wherever the timing
puts it, these end the process exactly in the window that matters:

- ``gateway.after_spool_commit``: a batch is durable in the spool and its
  MQTT PUBACKs were never sent, so the broker must redeliver those messages
  and the restarted gateway must recognise them (spool ``inflight`` records)
  instead of spooling their readings a second time;
- ``party.after_persist``: a real cluster party stored a batch but died
  before answering, so the gateway retries and the restarted party must
  answer ``duplicate`` (not store it twice, not call it a replay).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from demo.services import free_port
from gateway.keys import PUBLIC_FILE, GatewayKeys
from tecc_contract.crashpoint import CRASH_EXIT_CODE
from tecc_contract.crashpoint import CRASH_EXIT_CODE as PARTY_CRASH
from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment, metric
from tests.gateway.conftest import running
from tests.gateway.harness import (
    cli,
    health,
    kill9,
    real_cluster_config,
    spawn,
    terminate,
    wait_for,
    write_config,
)
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform, readings
from tests.gateway.services import mosquitto, swtpm

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]
TOPIC = "plant/line1/temp/value"


def _msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    return [(TOPIC, str(i / 100).encode()) for i in range(start, start + n)]


async def _ready(port: int) -> bool:
    h = await health(port)
    return bool(
        h
        and h["sources"]["mq"]["connected"]
        and all(c["attested"] for c in h["clusters"].values())
        and h["sealing"]
    )


async def _exit_code(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


@pytest.mark.tpm
async def test_gateway_crash_between_spool_commit_and_puback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second batch is spooled, the process ends before its PUBACKs: no reading twice.

    Fails without the spool's inflight records (the redelivered messages are then
    spooled again and reach the clusters twice).
    """
    platform = Platform()
    with swtpm(tmp_path / "tpm") as sw, mosquitto(tmp_path / "mq") as broker:
        ports = [free_port(), free_port()]
        placeholder = [FakeCluster(i, ports[i], platform, {}) for i in range(2)]
        cfg = write_config(
            tmp_path,
            clusters=placeholder,
            platform=platform,
            tcti=sw.tcti,
            mqtt_port=broker.port,
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
        monkeypatch.setenv("TECC_CRASH_AT", "gateway.after_spool_commit@2")
        proc = spawn(cfg, log)
        monkeypatch.delenv("TECC_CRASH_AT")
        try:
            await wait_for(lambda: _ready(http_port), 30, "agent ready")
            await asyncio.to_thread(publish, broker.port, _msgs(0, 50))
            await wait_for(lambda: len(readings(clusters)) >= 1, 30, "the first batch delivered")
            await asyncio.to_thread(publish, broker.port, _msgs(50, 150))
            code = await _exit_code(proc, 30)
            assert code == CRASH_EXIT_CODE, log.read_text()[-3000:]
            proc = spawn(cfg, log)  # no crash point this time
            await wait_for(lambda: _ready(http_port), 30, "restarted agent ready")
            await asyncio.to_thread(publish, broker.port, _msgs(200, 50))
            await wait_for(lambda: len(readings(clusters)) >= 250, 30, "every reading")
            assert terminate(proc) == 0
        finally:
            if proc.poll() is None:
                kill9(proc)
            for c in clusters:
                await c.stop()
    ids = Counter(round(v * 100) for s, _, v in readings(clusters) if s == "line1.temp")
    assert sorted(ids) == list(range(250)), "a reading was lost"
    assert max(ids.values()) == 1, f"delivered twice: {[k for k, n in ids.items() if n > 1]}"
    assert all(c.replays == 0 for c in clusters)


async def test_party_crash_between_persist_and_ack(
    tmp_path: Path, keys: GatewayKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """party0 stores a batch and ends before answering; the retry is a duplicate, stored once."""
    (tmp_path / "cloud").mkdir()
    dep = Deployment(tmp_path / "cloud", POLICY, {"gw-test": keys.identity})
    try:
        await asyncio.to_thread(dep.start_all)
        await asyncio.to_thread(dep.stop, "party0")
        monkeypatch.setenv("TECC_CRASH_AT", "party.after_persist")
        await asyncio.to_thread(dep.start, "party0")
        monkeypatch.delenv("TECC_CRASH_AT")
        await asyncio.to_thread(dep.wait_healthy, "party0")
        with mosquitto(tmp_path / "mq") as broker:
            cfg = real_cluster_config(tmp_path, dep, broker.port)
            async with running(cfg, keys) as agent:
                await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
                first = agent.spool.last_seq()
                await asyncio.to_thread(publish, broker.port, _msgs(0, 100))
                crashed = dep.procs["party0"]
                code = await _exit_code(crashed, 30)
                assert code == PARTY_CRASH, dep.log_path("party0").read_text()[-3000:]
                dep.procs.pop("party0")
                await asyncio.to_thread(dep.start, "party0")
                await asyncio.to_thread(dep.wait_healthy, "party0")
                await wait_for(
                    lambda: agent.spool.depth(0) == agent.spool.depth(1) == 0, 30, "spool drained"
                )
                spooled = agent.spool.last_seq() - first
                health = [dep.wait_healthy(f"party{i}") for i in (0, 1)]
                dup = metric(dep, "party0", 'tecc_ingest_batches_total{outcome="duplicate"}')
                replays = metric(dep, "party0", 'tecc_ingest_rejected_total{reason="replay"}')
    finally:
        await asyncio.to_thread(dep.stop_all)
    assert spooled >= 1
    assert [h["batches"] for h in health] == [spooled, spooled]  # each batch stored once
    assert dup >= 1  # the retry of the persisted, unanswered batch
    assert replays == 0
