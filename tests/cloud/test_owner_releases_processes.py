"""A policy rollout under owner-signed release manifests, with the real service processes.

Two parties, the dealer and the output service trust only the plant owner's
key (``attestation.owner_key``, no ``allowed_measurements``); the owner's key
pair and every manifest come from the real ``tecc-cluster admin`` CLI, put at
the services' ``release_manifest`` path. A manifest signed by another key is
refused (counted; nobody pairs); the owner's manifest put in place pairs them
without a restart; party1 restarted with a new policy is refused while the
manifest does not list it; a manifest listing the old and the new build,
put in place with nothing restarted, pairs it with the old party0, the dealer
and the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cloud.scenario import POLICY
from tests.cloud.services import Deployment, http_json, metric
from tests.gateway.test_release_manifest import admin

pytestmark = [pytest.mark.processes, pytest.mark.slow]
NEW_POLICY = {**POLICY, "zscore": {**POLICY["zscore"], "k": 3.5}}


def sign(owner: Path, out: Path, *policies: Path) -> dict[str, Any]:
    """A manifest allowing the builds of ``policies`` as party, dealer and output."""
    args: list[str | Path] = ["sign-manifest", "--key", owner / "owner.key"]
    for p in policies:
        args += ["--policy", p]
    for s in ("party", "dealer", "output"):
        args += ["--service", s]
    return admin(*args, "--valid-days", "1", "--out", out)


def wait(dep: Deployment, check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll ``check`` until true; TimeoutError naming ``what`` with every service's health."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    states = {n: health(dep, n) for n in dep.services}
    raise TimeoutError(f"timed out waiting for {what}: {states}")


def peer(dep: Deployment, party: str, other: str) -> dict[str, Any]:
    """``party``'s view of ``other`` (``peers`` of its ``/healthz``)."""
    doc: dict[str, Any] = dep.wait_healthy(party).get("peers", {}).get(other) or {}
    return doc


def health(dep: Deployment, name: str) -> dict[str, Any]:
    """A service's ``/healthz``."""
    return dep.wait_healthy(name)


def paired(dep: Deployment) -> bool:
    """Both parties run a session, the dealer serves both, the output attests both."""
    return (
        all(health(dep, p).get("session") == "running" for p in dep.parties)
        and health(dep, "dealer").get("parties") == {"party0": True, "party1": True}
        and health(dep, "output").get("clusters_attested") == 2
    )


def test_a_policy_rollout_is_one_signed_manifest(tmp_path: Path) -> None:
    """Foreign manifest: refused, counted, nobody pairs; the owner's: pairs without a
    restart; a new build not listed: refused; listed next to the old one: pairs, with
    only the upgraded party restarted."""
    owner, foreign = tmp_path / "owner", tmp_path / "foreign"
    made = admin("owner-key", "init", "--out", owner)
    admin("owner-key", "init", "--out", foreign)
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    served = cloud / "manifest.json"
    dep = Deployment(
        cloud,
        POLICY,
        {},
        attestation={"owner_key": str(owner / "owner.pub"), "reattest_s": 2.0},
        service_extra={"release_manifest": served.name},
    )
    old_policy = cloud / "policy-party0.yaml"
    sign(foreign, served, old_policy)
    signer = 'tecc_manifest_rejected_total{reason="signer"}'
    try:
        dep.start_all()
        wait(
            dep,
            lambda: "release manifest" in str(peer(dep, "party0", "party1").get("detail")),
            "refusal",
        )
        time.sleep(3.0)  # several attestation rounds under the foreign manifest
        foreign_refused = {n: metric(dep, n, signer) for n in ("party0", "dealer", "output")}
        foreign_sessions = [health(dep, p).get("session") for p in dep.parties]
        foreign_admitted = health(dep, "dealer").get("parties")
        foreign_output = health(dep, "output").get("clusters_attested")
        # the owner signs the build; the operator replaces the file; nobody restarts
        sign(owner, served, old_policy)
        wait(dep, lambda: paired(dep), "the services to pair under the owner's manifest")
        issued = metric(dep, "party0", "tecc_manifest_issued_seconds")
        # party1 upgrades to a new policy the manifest does not list yet
        dep.stop("party1")
        new_policy = cloud / "policy-party1.yaml"
        new_policy.write_text(yaml.safe_dump(NEW_POLICY))
        # the new build cannot unseal the old build's keys: it starts with new ones
        (dep.state_dir("party1") / "sealed_keys.bin").unlink()
        dep.start("party1")
        wait(
            dep,
            lambda: "lists no party build" in str(peer(dep, "party0", "party1").get("detail")),
            "party0 to refuse the unlisted build",
        )
        unlisted_session = health(dep, "party0").get("session")
        # the owner lists old and new build; the file is replaced; only party1 ever restarted
        sign(owner, served, old_policy, new_policy)
        wait(dep, lambda: paired(dep), "the old and the new build to pair")
        new_peer = peer(dep, "party0", "party1")
        issued_after = metric(dep, "party0", "tecc_manifest_issued_seconds")
        status, manifest_doc = http_json(dep.url("party0") + "/v1/manifest")
        in_force = {n: health(dep, n).get("release_manifest") for n in ("party0", "dealer")}
    finally:
        dep.stop_all()
    assert all(v >= 1 for v in foreign_refused.values()), foreign_refused
    assert "running" not in foreign_sessions, foreign_sessions
    assert foreign_admitted == {"party0": False, "party1": False}
    assert foreign_output == 0
    assert issued > 0
    assert unlisted_session != "running"
    assert new_peer["attested"] is True
    assert issued_after > issued
    assert status == 200
    assert manifest_doc["owner_key_id"] == made["owner_key_id"]
    assert len(manifest_doc["entries"]) == 2
    for doc in in_force.values():  # /healthz shows the manifest in force
        assert doc is not None
        assert doc["owner_key_id"] == made["owner_key_id"]
        assert doc["issued_ns"] == manifest_doc["issued_ns"]
        assert doc["entries"] == 2
