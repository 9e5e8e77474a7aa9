"""A healthy, idle gateway link follows new release manifests without re-attesting first.

Real parties serve the owner-signed manifest; the gateway trusts only the
owner's key (``trust.refresh_s: 0.5``). Once its readings are delivered the
links idle, and an idle link re-attests only every few minutes. A newer
manifest put on the clusters is in force at the gateway within seconds, and
one that no longer lists the clusters' build makes every link attest again
and fail, with no new reading to wake them. Both fail on the code before this
change (the manifest was fetched only when a link attested).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.agent import Agent
from gateway.keys import GatewayKeys
from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment
from tests.gateway.conftest import running
from tests.gateway.harness import wait_for
from tests.gateway.publisher import publish
from tests.gateway.services import mosquitto
from tests.gateway.test_release_manifest import accepted, admin, msgs, owner_only_config, sign

pytestmark = [pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]


def failures(agent: Agent) -> float:
    """``gateway_attestation_failures_total`` over both clusters."""
    reg = agent.metrics.registry
    return sum(
        reg.get_sample_value("gateway_attestation_failures_total", {"cluster": c}) or 0.0
        for c in ("0", "1")
    )


async def test_an_idle_link_follows_and_a_withdrawal_takes_effect(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    """New manifest in force while idle; a manifest withdrawing the build stops the links."""
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    owner = tmp_path / "owner"
    admin("owner-key", "init", "--out", owner)
    served = cloud / "manifest.json"
    dep = Deployment(
        cloud, POLICY, {"gw-test": keys.identity}, party_extra={"release_manifest": served.name}
    )
    policy = cloud / "policy-party0.yaml"
    sign(owner, policy, served)
    try:
        await asyncio.to_thread(dep.start_all)
        with mosquitto(tmp_path / "mq") as broker:
            cfg = owner_only_config(tmp_path, dep, broker.port, owner / "owner.pub")
            async with running(cfg, keys) as agent:
                await wait_for(lambda: agent.mqtt[0].connected, 10, "mqtt")
                await asyncio.to_thread(publish, broker.port, msgs(0, 20))
                await wait_for(lambda: accepted(dep) == [20, 20], 30, "first readings")
                await wait_for(
                    lambda: agent.spool.depth(0) == agent.spool.depth(1) == 0, 10, "spool drained"
                )
                await asyncio.sleep(2.0)  # the links idle now
                attested = [link.attested_at for link in agent.links]
                newer = await asyncio.to_thread(sign, owner, policy, served)
                await wait_for(
                    lambda: (
                        agent.manifests is not None
                        and agent.manifests.current is not None
                        and agent.manifests.current.issued_ns == newer["issued_ns"]
                    ),
                    15,
                    "the newer manifest in force while idle",
                )
                before = failures(agent)
                withdrawn: list[str | Path] = [
                    "sign-manifest", "--key", owner / "owner.key", "--measurement", "00" * 32,
                    "--policy-digest", "00" * 32, "--valid-days", "1", "--out", served,
                ]  # fmt: skip
                await asyncio.to_thread(admin, *withdrawn)
                await wait_for(lambda: failures(agent) > before, 15, "the links to re-attest")
                errors = [link.last_error or "" for link in agent.links]
    finally:
        await asyncio.to_thread(dep.stop_all)
    assert all(a is not None for a in attested)
    assert any("release manifest" in e for e in errors), errors
