"""A gateway that trusts only the plant owner's key, against the real cluster services.

The parties serve ``release_manifest`` at ``GET /v1/manifest``; the owner's
key pair and every manifest come from the real ``tecc-cluster admin`` CLI.
The gateway's config lists no measurement at all. A manifest signed by
another key is refused (counted, nothing uploaded, the batches stay in the
spool); the owner's manifest put in place lets them flow without a restart;
a tampered one served by a restarted cluster is refused while the good one
stays in force.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo.devstack.deployment import ROOT, http_json
from gateway.agent import Agent
from gateway.keys import GatewayKeys
from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment, metric
from tests.gateway.conftest import running
from tests.gateway.harness import real_cluster_config, wait_for
from tests.gateway.publisher import publish
from tests.gateway.services import mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]
TOPIC = "plant/line1/temp/value"


def admin(*args: str | Path) -> dict[str, Any]:
    """Run ``tecc-cluster admin ARGS``; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "cloud_tecc", "admin", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def sign(key_dir: Path, policy: Path, out: Path) -> dict[str, Any]:
    """A manifest allowing this installation's build of ``policy`` as a party."""
    return admin(
        "sign-manifest", "--key", key_dir / "owner.key", "--policy", policy,
        "--valid-days", "1", "--note", "test build", "--out", out,
    )  # fmt: skip


def owner_only_config(tmp: Path, dep: Deployment, port: int, owner_pub: Path) -> Path:
    """The real-cluster gateway config with no measurement, trusting the owner key."""
    path = real_cluster_config(tmp, dep, port)
    doc = yaml.safe_load(path.read_text())
    doc["attestation"]["allowed_measurements"] = []
    doc["trust"] = {"owner_key": str(owner_pub), "refresh_s": 0.5}
    path.write_text(yaml.safe_dump(doc))
    return path


def accepted(dep: Deployment) -> list[float]:
    """Readings each party accepted."""
    return [metric(dep, p, "tecc_ingest_readings_total") for p in dep.parties]


def rejected(agent: Agent, reason: str) -> float:
    """The gateway's ``gateway_manifest_rejected_total{reason}``."""
    value = agent.metrics.registry.get_sample_value(
        "gateway_manifest_rejected_total", {"reason": reason}
    )
    return 0.0 if value is None else value


def msgs(start: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` distinct readings."""
    return [(TOPIC, str(20 + (start + i) / 100).encode()) for i in range(n)]


async def test_owner_signed_manifest_gates_the_uplink(tmp_path: Path, keys: GatewayKeys) -> None:
    """Foreign manifest: refused, nothing sent; owner's manifest: flows, no restart."""
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    owner, foreign = tmp_path / "owner", tmp_path / "foreign"
    made = admin("owner-key", "init", "--out", owner)
    admin("owner-key", "init", "--out", foreign)
    assert (owner / "owner.key").stat().st_mode & 0o777 == 0o600
    served = cloud / "manifest.json"
    party_extra = {"release_manifest": served.name}
    dep = Deployment(cloud, POLICY, {"gw-test": keys.identity}, party_extra=party_extra)
    policy = cloud / "policy-party0.yaml"
    sign(foreign, policy, served)
    try:
        await asyncio.to_thread(dep.start_all)
        status, body = await asyncio.to_thread(http_json, f"{dep.url('party0')}/v1/manifest")
        assert status == 200
        assert body["owner_key_id"] != made["owner_key_id"]
        assert (await asyncio.to_thread(http_json, f"{dep.url('dealer')}/v1/manifest"))[0] == 404
        with mosquitto(tmp_path / "mq") as broker:
            # pin the clusters' keys once under a fixed measurement list (a previous run)
            async with running(real_cluster_config(tmp_path, dep, broker.port), keys) as agent:
                await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
                await asyncio.to_thread(publish, broker.port, msgs(0, 20))
                await wait_for(lambda: accepted(dep) == [20, 20], 30, "first readings")
            cfg = owner_only_config(tmp_path, dep, broker.port, owner / "owner.pub")
            async with running(cfg, keys) as agent:
                await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
                await asyncio.to_thread(publish, broker.port, msgs(20, 30))
                await wait_for(
                    lambda: rejected(agent, "signer") >= 2 and agent.spool.depth(0) > 0,
                    30,
                    "the foreign manifest refused and batches spooled",
                )
                await asyncio.sleep(1.0)
                refused_accepted = accepted(dep)
                refused_depth = [agent.spool.depth(0), agent.spool.depth(1)]
                refused_errors = [link.last_error or "" for link in agent.links]
                # the owner signs; the operator puts the file in place; nobody restarts
                sign(owner, policy, served)
                await wait_for(lambda: accepted(dep) == [50, 50], 60, "the spooled readings")
                await wait_for(
                    lambda: agent.spool.depth(0) == agent.spool.depth(1) == 0, 10, "spool drained"
                )
                good = agent.manifests.current if agent.manifests else None
                health = agent.health()[1]["release_manifest"]
                # party0 restarts serving a tampered manifest: refused, the good one stays
                doc = json.loads(served.read_text())
                doc["entries"][0]["services"] = ["dealer", "party"]
                served.write_text(json.dumps(doc))
                await asyncio.to_thread(dep.stop, "party0")
                await asyncio.to_thread(dep.start, "party0")
                await asyncio.to_thread(dep.wait_healthy, "party0")
                await asyncio.to_thread(publish, broker.port, msgs(50, 10))
                # party0's counter restarted with its process
                await wait_for(lambda: accepted(dep) == [10, 60], 60, "readings after tampering")
                tampered = rejected(agent, "signature")
                still = agent.manifests.current if agent.manifests else None
    finally:
        await asyncio.to_thread(dep.stop_all)
    assert refused_accepted == [20, 20]  # nothing of the 30 reached a cluster
    assert min(refused_depth) > 0  # they stay spooled for both clusters
    assert all("release manifest" in e for e in refused_errors), refused_errors
    assert good is not None
    assert good.owner_key_id == made["owner_key_id"]
    assert health["owner_key_id"] == made["owner_key_id"]
    assert health["issued_ns"] == good.issued_ns
    assert tampered >= 1
    assert still == good
