"""N = 2, 3, 4 clusters as real processes: the same readings give the same release.

Each deployment is N parties, the dealer and the output service as separate
processes on loopback (real HTTP, the attested WebSocket mesh between every
pair of parties, N dealer links). Fed the same known readings, every released
statistic and flag equals the plaintext reference *and* equals the release of
the other N.

Exactness: counts, means, standard deviations, min/max, limit, rate and
flatline flags are exact functions of ring sums and exact comparisons, so
they are equal bit for bit. The z-score and fleet-deviation flags compare
values that went through the one-LSB truncation, whose error (0 or +1 LSB)
depends on the dealer's random masks: a reading within that band of its
threshold can flip between *runs*, for any N (two runs at the same N
included). Seed 7 of the scenario has 2 such readings out of 3,660 (seed 12:
none); seed 12 is used here (asserted: ``borderline == 0``), so every flag is
determined and the releases of N = 2, 3, 4 are asserted exactly equal,
z-score flags included.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .scenario import (
    GATEWAYS,
    POLICY,
    check_api,
    compare,
    gateways,
    make_scenario,
    reference,
    upload_all,
    wait_epochs,
)
from .services import Deployment, http_json, metric

pytestmark = [pytest.mark.processes, pytest.mark.slow]

SEED = 12  # a scenario without readings inside the truncation band (module docstring)
WINDOW_FIELDS = ("count", "mean", "std", "min", "max", "deviates_from_fleet")


def _release(dep: Deployment) -> dict[str, Any]:
    """What the output service released, without its own row ids."""
    _, windows = http_json(dep.url("output") + "/api/v1/windows")
    _, alerts = http_json(dep.url("output") + "/api/v1/alerts")
    _, fleet = http_json(dep.url("output") + "/api/v1/fleet")
    return {
        "windows": {
            (w["gateway"], w["sensor"], w["start_ns"]): tuple(w.get(f) for f in WINDOW_FIELDS)
            for w in windows
        },
        "alerts": sorted((a["gateway"], a["sensor"], a["ts_ns"], a["detector"]) for a in alerts),
        "fleet": {(f["class"], f["start_ns"]): (f["count"], f["mean"], f["std"]) for f in fleet},
    }


def _check_mesh(dep: Deployment) -> None:
    """Every party runs an N-party session and reports every peer attested."""
    for name in dep.parties:
        health = dep.wait_healthy(name)
        assert health["n_parties"] == dep.n_parties
        assert health["session"] == "running", (name, health["session"])
        peers = {p for p in dep.parties if p != name}
        assert peers <= set(health["peers"]), (name, health["peers"])
        assert all(health["peers"][p]["attested"] for p in peers), health["peers"]


def test_same_release_for_two_three_and_four_clusters(tmp_path: Path) -> None:
    """Released statistics and flags equal the reference and are equal for N = 2, 3, 4."""
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    scn = make_scenario(seed=SEED)
    want = reference(scn)
    released: dict[int, dict[str, Any]] = {}
    for n in (2, 3, 4):
        dep = Deployment(tmp_path / f"n{n}", POLICY, keys, n_parties=n)
        try:
            dep.start_all()
            gws = gateways(dep)
            assert all(len(gw.seal(0, scn.batch(g, 0))) == n for g, gw in gws.items())
            assert set(upload_all(gws, scn, range(scn.seconds))) == {"accepted"}
            wait_epochs(dep, 3)
            summary = compare(dep, want)
            check_api(dep)
            _check_mesh(dep)
            released[n] = _release(dep)
        finally:
            dep.stop_all()
        assert summary["windows"] == 3 * 3 * len(GATEWAYS)
        assert summary["alerts"] > 0
        assert summary["borderline"] == 0  # every flag is determined (module docstring)
        assert summary["z_differences"] == 0
    assert released[3] == released[2]
    assert released[4] == released[2]
    detectors = {a[3] for a in released[2]["alerts"]}
    assert {"limit", "rate", "zscore"} <= detectors, detectors


def test_one_of_three_clusters_failing_attestation_stops_all(tmp_path: Path) -> None:
    """N = 3, party 2 runs an edited policy: both others name it and compute nothing.

    Every peer is attested, not only one: parties 0 and 1 attest each other
    but refuse party 2, so no session runs anywhere and no epoch is released
    (no 2-of-3 fallback); the dealer admits only the parties that attest.
    """
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    edited = {**POLICY, "min_count": 1}
    dep = Deployment(tmp_path, POLICY, keys, n_parties=3, policy_overrides={"party2": edited})
    try:
        dep.start_all()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            health = [dep.wait_healthy(p) for p in ("party0", "party1")]
            if all("allow-list" in h.get("peers", {}).get("party2", {}).get("detail", "")
                   for h in health):  # fmt: skip
                break
            time.sleep(0.3)
        for name, h in zip(("party0", "party1"), health, strict=True):
            other = "party1" if name == "party0" else "party0"
            assert h["peers"][other]["attested"] is True, (name, h["peers"])
            assert h["peers"]["party2"]["attested"] is False, (name, h["peers"])
            assert "allow-list" in h["peers"]["party2"]["detail"]
            assert h["session"] != "running"
            assert "party2" in h["session"], h["session"]
        assert metric(dep, "party0", 'tecc_party_peer_attested{peer="party2"}') == 0
        dealer = dep.wait_healthy("dealer")
        assert dealer["parties"]["party2"] is False
        _, epochs = http_json(dep.url("output") + "/api/v1/epochs")
        assert epochs == []
    finally:
        dep.stop_all()
