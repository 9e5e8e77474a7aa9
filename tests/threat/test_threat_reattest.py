"""Peers and the dealer re-attest during a running session, not only at its start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.devstack.deployment import Deployment
from tests.cloud.scenario import GATEWAYS, POLICY
from tests.cloud.services import metric

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def _running(dep: Deployment, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while dep.wait_healthy("party0")["session"] != "running":
        assert time.monotonic() < deadline, "the MPC session never came up"
        time.sleep(0.2)


def test_parties_and_dealer_reattest_during_one_session(tmp_path: Path) -> None:
    """With ``reattest_s: 0.5`` fresh quotes are checked while one session keeps running.

    Fails on the code before this change: identities were verified once per
    session (the peer's ``checked_ns`` never moved, the dealer never asked again).
    """
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    dep = Deployment(tmp_path, POLICY, keys, attestation={"reattest_s": 0.5})
    try:
        dep.start_all()
        _running(dep)
        first = dep.wait_healthy("party0")["peers"]["party1"]["checked_ns"]
        started = metric(dep, "party0", 'tecc_party_sessions_total{outcome="started"}')
        time.sleep(3.0)
        health = dep.wait_healthy("party0")
        assert health["session"] == "running"
        assert health["peers"]["party1"]["attested"] is True
        assert health["peers"]["party1"]["checked_ns"] > first
        assert health["peers"]["dealer"]["checked_ns"] > first
        # still the same session: re-attesting did not tear it down
        assert metric(dep, "party0", 'tecc_party_sessions_total{outcome="started"}') == started
        assert metric(dep, "dealer", "tecc_dealer_reattested_total") >= 4
        assert metric(dep, "dealer", "tecc_dealer_reattest_failures_total") == 0
    finally:
        dep.stop_all()
