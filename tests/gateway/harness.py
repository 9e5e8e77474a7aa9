"""Test harness: gateway configs for the test services, subprocess control, metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import yaml

from demo.services import free_port
from tests.gateway.receiver import GOOD_MEASUREMENT

if TYPE_CHECKING:
    from demo.devstack.deployment import Deployment

ROOT = Path(__file__).resolve().parents[2]
MQTT_SENSORS = {"line1.temp": (-50.0, 150.0), "line1.press": (0.0, 1000.0)}


class ClusterRef(Protocol):
    """What a gateway config needs to know of a cluster."""

    @property
    def index(self) -> int: ...
    @property
    def url(self) -> str: ...
    @property
    def service_id(self) -> str: ...


class PlatformRef(Protocol):
    """What a gateway config needs to know of the attestation platform."""

    @property
    def key_id(self) -> str: ...
    @property
    def public_hex(self) -> str: ...


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster as a test gateway config names it (satisfies :class:`ClusterRef`)."""

    index: int
    url: str
    service_id: str


@dataclass(frozen=True)
class PlatformSpec:
    """An attestation platform as a test config names it (satisfies :class:`PlatformRef`)."""

    key_id: str
    public_hex: str


def opcua_sensors(n: int) -> dict[str, tuple[float, float]]:
    """Sensor ids the test OPC-UA server's variables map to."""
    return {f"line2.v{i}": (-1e6, 1e6) for i in range(n)}


def write_config(
    tmp: Path,
    *,
    clusters: Sequence[ClusterRef],
    platform: PlatformRef | Sequence[PlatformRef],
    tcti: str = "swtpm:port=1",
    mqtt_port: int | None = None,
    opcua_url: str | None = None,
    opcua_nodes: int = 0,
    max_delay_s: float = 0.1,
    max_readings: int = 20_000,
    spool_max_bytes: int = 1 << 30,
    client_id: str = "test-gw",
    opcua_security: dict[str, str] | None = None,
    opcua_explicit: list[dict[str, Any]] | None = None,
    measurement: bytes = GOOD_MEASUREMENT,
) -> Path:
    """Write a gateway YAML for the given services; return its path."""
    sensors = {**MQTT_SENSORS, **opcua_sensors(opcua_nodes)}
    sources: dict[str, Any] = {}
    if mqtt_port is not None:
        sources["mqtt"] = [
            {
                "name": "mq",
                "host": "127.0.0.1",
                "port": mqtt_port,
                "client_id": client_id,
                "topics": [
                    {"filter": "plant/+/+/value", "sensor_template": "{0}.{1}", "format": "number"},
                    {
                        "filter": "plant/+/+/json",
                        "sensor_template": "{0}.{1}",
                        "format": "json",
                        "value_path": "v",
                        "timestamp_path": "ts",
                    },
                    {
                        "filter": "plant/+/+/batch",
                        "sensor_template": "{0}.{1}",
                        "format": "json_batch",
                        "value_path": "v",
                        "timestamp_path": "ts",
                    },
                ],
            }
        ]
    if opcua_url is not None:
        sources["opcua"] = [
            {
                "name": "plc",
                "url": opcua_url,
                "publishing_ms": 50,
                "subscribe_batch": 2,
                **(
                    {"nodes": opcua_explicit}
                    if opcua_explicit is not None
                    else {
                        "browse": [
                            {
                                "folder": "ns=2;s=Line2",
                                "sensor_template": "line2.{name}",
                                "sampling_ms": 0,
                                "queue_size": 100,
                            }
                        ]
                    }
                ),
                "security": opcua_security or {"policy": "None"},
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 2.0,
            }
        ]
    doc = {
        "gateway_id": "gw-test",
        "state_dir": str(tmp / "state"),
        "sensors": [{"id": k, "range": list(v)} for k, v in sensors.items()],
        "sources": sources,
        "batching": {"max_readings": max_readings, "max_delay_s": max_delay_s},
        "spool": {"path": str(tmp / "state" / "spool.db"), "max_bytes": spool_max_bytes},
        "clusters": [
            {"index": c.index, "url": c.url, "service_id": c.service_id}
            | ({} if c.url.startswith("https://") else {"tls": False})  # plain: loopback only
            for c in clusters
        ],
        "attestation": {
            "platform_keys": {
                p.key_id: p.public_hex
                for p in (platform if isinstance(platform, Sequence) else [platform])
            },
            "allowed_measurements": [measurement.hex()],
        },
        "tpm": {"tcti": tcti, "pcrs": [7, 14]},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "envelope": {"suite": "x25519", "columns": ["value"]},
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the agent through its measured launcher (``python -m gateway launch``, which execs
    ``run``) as a real subprocess in its own process group."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "launch", "--config", str(config)],
            cwd=ROOT,
            stdout=fh,
            stderr=fh,
            env=env,
            start_new_session=True,
        )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the agent: no shutdown code runs."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def terminate(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the agent and wait for its graceful exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


async def scrape(port: int) -> str:
    """GET /metrics from an agent."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name = head.split("{", 1)[0]
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def wait_for(pred: Any, within: float, what: str) -> None:
    """Poll ``pred()`` (sync or async) until true or fail with ``what``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within} s waiting for {what}")


def real_cluster_config(tmp: Path, dep: Deployment, mqtt_port: int) -> Path:
    """A gateway config for the real parties of ``dep`` (their platforms and measurement)."""
    plat = [
        PlatformSpec(dep.platform(n).key_id, dep.platform(n).public_key_hex) for n in dep.parties
    ]
    clusters = [ClusterSpec(i, dep.url(n), n) for i, n in enumerate(dep.parties)]
    return write_config(
        tmp, clusters=clusters, platform=plat, mqtt_port=mqtt_port, measurement=dep.measurement()
    )


async def health(port: int) -> dict[str, Any]:
    """The agent's ``/healthz`` document, or ``{}`` while it does not answer."""
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            return dict(await r.json())
    except (aiohttp.ClientError, OSError):
        return {}
