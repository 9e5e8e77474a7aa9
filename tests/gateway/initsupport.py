"""Helpers of the ``tecc-gateway init`` tests: the simulator as a foreign OPC-UA server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from demo.services import wait_for_port
from tests.gateway.harness import ROOT
from tests.gateway.receiver import GOOD_MEASUREMENT, FakeCluster, Platform

DEMO_SIM = ROOT / "configs" / "demo" / "sim.yaml"


def opcua_line(tmp: Path) -> tuple[Path, dict[str, tuple[float, float, str]]]:
    """A simulator config with only the OPC-UA sensors of configs/demo/sim.yaml.

    Returns the file and the sensors it serves: id -> (low, high, unit).
    """
    doc = yaml.safe_load(DEMO_SIM.read_text())
    machines = []
    expected: dict[str, tuple[float, float, str]] = {}
    for m in doc["machines"]:
        if m.get("transport") != "opcua":
            continue
        m["sensors"] = [s for s in m["sensors"] if s.get("transport", "opcua") == "opcua"]
        for s in m["sensors"]:
            expected[f"{doc['line']}.{m['name']}.{s['name']}"] = (*s["range"], s["unit"])
        machines.append(m)
    doc["machines"] = machines
    doc.pop("scenario", None)
    doc["opcua"]["state_dir"] = str(tmp / "sim-opcua")
    doc["groundtruth"] = str(tmp / "groundtruth.jsonl")
    path = tmp / "sim.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, expected


def start_sim(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Run ``python -m firmware_sim run`` serving OPC-UA on ``port``; wait until it listens."""
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim", "run", "--config", str(config), "--quiet",
             "--opcua-port", str(port)],
            cwd=ROOT, stdout=fh, stderr=fh,
        )  # fmt: skip
    wait_for_port(port, 30)
    return proc


def trust_file(path: Path, clusters: list[FakeCluster], platform: Platform) -> Path:
    """The ``--trust`` file for the test clusters (what ``demo.cloud prepare`` writes)."""
    doc = {
        "clusters": [
            {"index": c.index, "url": c.url, "service_id": c.service_id} for c in clusters
        ],
        "attestation": {
            "platform_keys": {platform.key_id: platform.public_hex},
            "allowed_measurements": [GOOD_MEASUREMENT.hex()],
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return path
