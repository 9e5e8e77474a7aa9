"""Every trust domain on its own host: one network namespace each, one bridge between them.

Five namespaces made by the test (tests/support/netns.py): ``party0``,
``party1`` (the two clusters), ``cloud`` (dealer and output service),
``gateway`` (a real ``tecc-gateway`` with its swtpm and the plant's
mosquitto) and the ``switch`` holding the bridge. Every address in the
services' configs is a host's own 10.77.0.x address; each namespace has its
own loopback, so a service that reached another over 127.0.0.1 would find
nothing there. Party-to-party MPC, party-to-dealer, party-to-output and
gateway-to-party traffic all cross the bridge (its port counters are
checked). Readings published on MQTT must come out of the output service as
exactly the plaintext reference's windows. From party1's host, party0's MPC
listener refuses a peer that is not the attested party1.

Needs root (CI runs as root); without it the test fails and says so.
docs/CLOUD.md, "Separate hosts", describes the layout.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import paho.mqtt.client as paho
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from paho.mqtt.enums import CallbackAPIVersion

from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.mpc import wslink
from cloud_tecc.mpc.errors import MpcError
from cloud_tecc.mpc.handshake import party_name
from demo.devstack.deployment import Deployment, http_json
from demo.layout import SimSensor, gateway_config, sensor_scales
from demo.services import free_port, free_port_pair, mosquitto_binary, mosquitto_config, swtpm_argv
from demo.services import wait_for_port as _wait_for_port
from gateway.config import PayloadFormat
from gateway.sources.payload import PayloadSpec, parse_payload
from tecc_contract.attestation import Quote
from tests.cloud.scenario import compare
from tests.support.netns import Hosts, NetnsError, hosts

pytestmark = [
    pytest.mark.processes,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.netns,
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("party0", "party1", "cloud", "gateway")
GATEWAY = "gw-ns"
POLICY: dict[str, Any] = {
    "window_s": 1,
    "min_count": 5,
    "limits": [{"sensor": "temp*", "low": 0.0, "high": 80.0}],
    "rates": [{"sensor": "temp*", "max_delta": 6.0}],
    "zscore": {"window": 40, "k": 3.0, "min_baseline": 10, "min_sigma": 0.01},
    "fleet": {"classes": {"temperature": ["temp*"]}, "k": 1.5},
}
SENSORS = [
    SimSensor("temp1", "m1", "C", -50.0, 150.0, "mqtt", "plant/m1/temp1"),
    SimSensor("temp2", "m2", "C", -50.0, 150.0, "mqtt", "plant/m2/temp2"),
    SimSensor("press1", "m1", "bar", 0.0, 2000.0, "mqtt", "plant/m1/press1"),
]
PUBLISH_S = 4.0
TICK_S = 0.1


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def net() -> Iterator[Hosts]:
    """The run's namespaces; a missing privilege fails the test with what it needs."""
    try:
        with hosts(ROLES) as h:
            yield h
    except NetnsError as exc:
        pytest.fail(str(exc))


class Children:
    """Processes the test started in the namespaces, stopped by their pid on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _wait_port(port: int, host: str) -> None:
    _wait_for_port(port, 15.0, host)


def _gateway_health(url: str, timeout_s: float) -> dict[str, Any]:
    """Wait until the gateway's MQTT source is connected and both clusters attested."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status, body = http_json(url, timeout=2)
            if (
                status == 200
                and all(s.get("connected") for s in body["sources"].values())
                and all(c["attested"] for c in body["clusters"].values())
            ):
                return body
        except (urllib.error.URLError, OSError, KeyError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the gateway did not attest both clusters: {body}")


def _publish(host: str, port: int) -> list[tuple[str, bytes]]:
    """Publish every sensor's readings (two per message, stamped now) for PUBLISH_S."""
    rng = np.random.default_rng(5)
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect(host, port)
    client.loop_start()
    sent: list[tuple[str, bytes]] = []
    infos = []
    try:
        start = time.time()
        level = {"temp1": 40.0, "temp2": 45.0, "press1": 1000.0}
        k = 0
        while time.time() - start < PUBLISH_S:
            now = time.time()
            for s in SENSORS:
                items = []
                for j in range(2):
                    level[s.sensor] += float(rng.normal(0.0, 1.0))
                    v = 95.0 if (s.sensor == "temp1" and k == 20 and j == 0) else level[s.sensor]
                    items.append({"value": round(v, 3), "ts": round(now - 0.05 * (1 - j), 3)})
                payload = json.dumps(items).encode()
                infos.append(client.publish(str(s.topic), payload, qos=1))
                sent.append((s.sensor, payload))
            k += 1
            time.sleep(max(0.0, start + k * TICK_S - time.time()))
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        client.disconnect()
        client.loop_stop()
    return sent


def _reference_streams(sent: list[tuple[str, bytes]]) -> list[StreamReadings]:
    """What the gateway read, parsed by its own payload parser, in the scale it shares in."""
    spec = PayloadSpec(PayloadFormat.AUTO, ("value",), ("ts",))
    scales = sensor_scales(
        policy_from_mapping(POLICY), {s.sensor: (s.low, s.high) for s in SENSORS}
    )
    rows: dict[str, list[tuple[int, float]]] = {s.sensor: [] for s in SENSORS}
    for sensor, payload in sent:
        parsed = parse_payload(payload, spec, time.time_ns())
        assert not parsed.rejects, parsed
        numbers = [(t, v) for t, v in parsed.readings if isinstance(v, float)]
        assert len(numbers) == len(parsed.readings), parsed
        rows[sensor] += numbers
    return [
        StreamReadings(
            GATEWAY,
            sid,
            np.array([t for t, _ in r], dtype=np.int64),
            np.array([v for _, v in r], dtype=np.float64),
            scales[sid],
        )
        for sid, r in rows.items()
    ]


def _wait_windows(dep: Deployment, want: set[tuple[str, str, int]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    got: set[tuple[str, str, int]] = set()
    while time.monotonic() < deadline:
        _, windows = http_json(dep.url("output") + "/api/v1/windows")
        got = {(w["gateway"], w["sensor"], int(w["start_ns"])) for w in windows}
        if want <= got:
            return
        time.sleep(0.3)
    raise TimeoutError(f"windows not released: {sorted(want - got)[:5]}")


async def _impostor(dep: Deployment) -> str:
    """Connect to party0's MPC listener as ``party1`` with a key no quote attests."""
    nonce = os.urandom(32)
    status, body = http_json(f"{dep.url('party0')}/attestation?nonce={nonce.hex()}")
    assert status == 200, body
    server_key = Ed25519PublicKey.from_public_bytes(Quote.from_json(body).keys["sign"])
    host, port = dep.host("party0"), dep.ports["party0_mpc"]
    async with aiohttp.ClientSession() as session:
        try:
            link = await wslink.connect(
                session,
                f"http://{host}:{port}/mpc",
                name=party_name(1),
                key=Ed25519PrivateKey.generate(),
                server_name=party_name(0),
                server_key=server_key,
                wait_s=5.0,
            )
        except (MpcError, aiohttp.ClientError) as exc:
            return f"refused: {exc}"
        await link.close()
        return "accepted"


def _loopback_reaches(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_each_trust_domain_on_its_own_host(net: Hosts, tmp_path: Path) -> None:
    """Released windows equal the reference with every service on its own network host."""
    ip = net.addrs
    kids = Children(tmp_path / "logs")
    gw_dir = tmp_path / "gateway"
    tpm_port, mqtt_port, gw_http = free_port_pair(), free_port(), free_port()
    # The gateway's own devices: its TPM on the gateway host's loopback (a TPM is local
    # hardware), the plant's broker on the gateway host's address.
    (gw_dir / "tpm").mkdir(parents=True)
    kids.start("swtpm", net.argv("gateway", *swtpm_argv(gw_dir / "tpm", tpm_port)))
    conf = mosquitto_config(gw_dir / "mosquitto", mqtt_port, persistence=False, host=ip["gateway"])
    kids.start("mosquitto", net.argv("gateway", mosquitto_binary(), "-c", str(conf)))
    hosts_of = {"party0": ip["party0"], "party1": ip["party1"]}
    hosts_of |= {"dealer": ip["cloud"], "output": ip["cloud"]}
    dep = Deployment(
        tmp_path / "cloud",
        POLICY,
        {},
        hosts=hosts_of,
        launch={n: net.argv("cloud" if n in ("dealer", "output") else n) for n in hosts_of},
    )
    try:
        net.inside("gateway", _wait_port, tpm_port + 1, "127.0.0.1")
        net.inside("gateway", _wait_port, mqtt_port, ip["gateway"])
        doc = gateway_config(
            GATEWAY,
            SENSORS,
            state_dir=gw_dir / "state",
            mqtt_port=mqtt_port,
            opcua_port=0,
            tpm_port=tpm_port,
            http_port=gw_http,
            clusters=[(i, dep.url(p), p) for i, p in enumerate(dep.parties)],
            platforms={dep.platform(p).key_id: dep.platform(p).public_key_hex for p in dep.parties},
            measurement=dep.measurement().hex(),
        )
        doc["sources"]["mqtt"][0]["host"] = ip["gateway"]
        doc["http"]["host"] = ip["gateway"]
        cfg = gw_dir / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        py = (sys.executable, "-m", "gateway")
        done = subprocess.run(
            net.argv("gateway", *py, "provision", "--config", str(cfg)),
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        dep.gateways = {GATEWAY: (gw_dir / "state" / "identity.pub").read_text().strip()}
        dep.gateway_health = {GATEWAY: f"http://{ip['gateway']}:{gw_http}/healthz"}
        dep.write_configs()
        cloud_yaml = "".join(
            (dep.root / f"{n}.yaml").read_text() for n in dep.services
        ) + json.dumps(doc["clusters"])
        assert "127.0.0.1" not in cloud_yaml
        assert "localhost" not in cloud_yaml

        net.inside("cloud", dep.start_all)
        kids.start("gateway", net.argv("gateway", *py, "launch", "--config", str(cfg)))
        health_url = f"http://{ip['gateway']}:{gw_http}/healthz"
        try:
            net.inside("gateway", _gateway_health, health_url, 30.0)
        except TimeoutError:
            pytest.fail(kids.log("gateway"))
        sent = net.inside("gateway", _publish, ip["gateway"], mqtt_port)
        ref = run_reference(policy_from_mapping(POLICY), _reference_streams(sent))
        want = {(w["gateway"], w["sensor"], w["start_ns"]) for r in ref for w in r.released.windows}
        assert len(want) >= 3 * math.floor(PUBLISH_S) - 3, want
        try:
            net.inside("cloud", _wait_windows, dep, want, 30.0)
        except TimeoutError as exc:
            logs = {n: dep.log_path(n).read_text()[-1500:] for n in dep.services}
            pytest.fail(f"{exc}\n{kids.log('gateway')}\n{logs}")
        summary = net.inside("cloud", compare, dep, ref)
        moved = {r: net.port_bytes(r) for r in ROLES}
        verdict = net.inside("party1", asyncio.run, _impostor(dep))
        shared = net.inside("party1", _loopback_reaches, dep.ports["party0"])
        clusters = net.inside("cloud", http_json, dep.url("output") + "/api/v1/clusters")[1]
        gateways = net.inside("cloud", http_json, dep.url("output") + "/api/v1/gateways")[1]
    finally:
        kids.stop_all()
        dep.stop_all()
    assert summary["windows"] == len(want)
    assert [c["attested"] for c in clusters] == [True, True]
    assert [(g["gateway_id"], g["reachable"]) for g in gateways] == [(GATEWAY, True)]
    # Every host's traffic crossed its bridge port (the only way out of its namespace):
    # the gateway's uploads, both parties' MPC with each other and the dealer's
    # correlations, their results to the output service.
    assert all(rx > 20_000 and tx > 20_000 for rx, tx in moved.values()), moved
    # party1's host shares no loopback with party0's: its ingest port is not there
    assert not shared
    # party0's MPC listener, reached from party1's own host, refuses a key no quote attests
    assert verdict.startswith("refused"), verdict
