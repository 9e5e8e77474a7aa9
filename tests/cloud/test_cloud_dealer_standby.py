"""A shard's dealer SIGKILLed mid-stream: the parties move to the standby dealer.

Two parties, two dealers (``dealer`` and its standby ``dealer2``, each its own
trust domain) and the output as processes. The dealers serve small batches
(``batch_readings: 20``), so the parties' read-ahead runs dry within the next
epoch and the kill is met mid-computation, not hidden by buffered batches.
Every released window is compared with the plaintext reference (each exactly
once), and the time from the kill to the next released epoch is printed; the
second test is the same run with one dealer that is restarted instead.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .scenario import (
    GATEWAYS,
    POLICY,
    SECOND,
    T0,
    Scenario,
    compare,
    declare,
    gateways,
    make_scenario,
    reference,
    upload_all,
    wait_epochs,
)
from .services import Deployment, TestGateway, http_json, metric

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def _deployment(tmp_path: Path, standbys: int) -> Deployment:
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    return Deployment(
        tmp_path,
        POLICY,
        keys,
        dealer_standbys=standbys,
        dealer_extra={"batch_readings": 20},
    )


def _upload_undeclared(gws: dict[str, TestGateway], scn: Scenario, seconds: range) -> None:
    """Upload the batches of ``seconds`` without closing their epochs (no progress notice)."""
    for sec in seconds:
        for g, gw in gws.items():
            assert [r[0] for r in gw.upload(gw.seal(sec, scn.batch(g, sec)))] == [200, 200]


def _kill_and_measure(dep: Deployment, *, restart: bool) -> tuple[float, list[dict[str, Any]]]:
    """Epoch 0 released; SIGKILL ``dealer``, close the other epochs; seconds to the next."""
    scn = make_scenario()
    gws = gateways(dep)
    upload_all(gws, scn, range(10))
    wait_epochs(dep, 1)
    _upload_undeclared(gws, scn, range(10, scn.seconds))
    dep.stop("dealer", signal.SIGKILL)
    killed = time.monotonic()
    if restart:
        dep.start("dealer")
    declare(gws, T0 + scn.seconds * SECOND)
    wait_epochs(dep, 2, timeout=90)
    took = time.monotonic() - killed
    epochs = wait_epochs(dep, 3, timeout=90)
    summary = compare(dep, reference(scn))
    _, windows = http_json(dep.url("output") + "/api/v1/windows")
    keys = [(w["gateway"], w["sensor"], w["start_ns"]) for w in windows]
    assert len(keys) == len(set(keys)) == summary["windows"] == 3 * 3 * len(GATEWAYS)
    assert len(epochs) == 3
    return took, epochs


def test_sigkilled_dealer_fails_over_to_the_standby(tmp_path: Path) -> None:
    """Analytics continue on ``dealer2``: every window once, equal to the reference."""
    dep = _deployment(tmp_path, standbys=1)
    try:
        dep.start_all()
        assert dep.wait_healthy("party0")["dealer"]["listed"] == ["dealer", "dealer2"]
        took, _ = _kill_and_measure(dep, restart=False)
        health = [dep.wait_healthy(p)["dealer"] for p in dep.parties]
        for h in health:
            assert h["in_use"] == "dealer2"
            assert h["failovers"] == 1
        assert health[0]["generation"] == health[1]["generation"] >= 2
        for p in dep.parties:
            assert metric(dep, p, "tecc_party_dealer_failovers_total") == 1
            assert metric(dep, p, 'tecc_party_dealer_in_use{dealer="dealer2"}') == 1
            assert metric(dep, p, 'tecc_party_dealer_in_use{dealer="dealer"}') == 0
        assert metric(dep, "dealer2", "tecc_dealer_batches") > 0
    finally:
        dep.stop_all()
    print(f"dealer SIGKILL -> next released epoch on the standby: {took:.2f} s")


def test_sigkilled_single_dealer_restarted(tmp_path: Path) -> None:
    """The baseline: one dealer, restarted at once after the kill; same results."""
    dep = _deployment(tmp_path, standbys=0)
    try:
        dep.start_all()
        took, _ = _kill_and_measure(dep, restart=True)
        assert dep.wait_healthy("party0")["dealer"]["failovers"] == 0
    finally:
        dep.stop_all()
    print(f"dealer SIGKILL + restart -> next released epoch: {took:.2f} s")
