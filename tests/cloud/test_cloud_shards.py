"""K shard workers per party as processes: the results combine exactly at the output.

Two parties × two shard workers, a dealer per shard and the output service,
all as processes (``Deployment(shards=2)``). The test plays the gateways
with today's direct HTTPS ingest: each batch is split by the shard map and
each shard's part is sealed and sent to that shard's worker of every party
(the JetStream frontends that split batches are another component). The
released windows, flags and fleet rows must equal the plaintext reference
and the K = 1 run of the same readings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.analytics.policy import policy_from_mapping
from demo.devstack.shards import ShardOf, send_sharded, shard_map

from .scenario import (
    GATEWAYS,
    POLICY,
    SECOND,
    T0,
    Scenario,
    _margin_map,
    compare,
    gateways,
    make_scenario,
    reference,
    wait_epochs,
)
from .services import Deployment, http_json, metric

pytestmark = [pytest.mark.processes, pytest.mark.slow]
KEYS = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}


def shard_of(shards: int) -> ShardOf:
    """The default map (fleet-class streams at hash(class) mod K) under the scenario policy."""
    return shard_map(policy_from_mapping(POLICY), shards)


def _run(root: Path, scn: Scenario, shards: int, wrong: ShardOf | None = None) -> dict[str, Any]:
    """Upload the scenario through ``shards`` workers per party; what the output serves."""
    dep = Deployment(root, POLICY, KEYS, shards=shards)
    smap = wrong or shard_of(shards)
    try:
        dep.start_all()
        gws = gateways(dep)
        for sec in range(scn.seconds):
            for g, gw in gws.items():
                for status, body in send_sharded(
                    dep, gw.sealer, g, sec, scn.batch(g, sec), shard_of=smap
                ):
                    assert (status, body["status"]) == (200, "accepted"), body
            assert set(dep.declare(T0 + (sec + 1) * SECOND, list(gws))) == {200}
        epochs = wait_epochs(dep, scn.seconds // 10 * shards)
        out: dict[str, Any] = {"epochs": epochs}
        if wrong is None:
            out["summary"] = compare(dep, reference(scn))
        for what in ("windows", "alerts", "fleet", "incidents", "health", "clusters"):
            status, out[what] = http_json(f"{dep.url('output')}/api/v1/{what}")
            assert status == 200, (what, out[what])
        out["workers"] = {w: dep.wait_healthy(w) for w in dep.workers}
        out["cross_shard"] = metric(
            dep,
            "output",
            'tecc_request_errors_total{endpoint="results",reason="fleet_cross_shard"}',
        )
        return out
    finally:
        dep.stop_all()


def _windows(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {
        (w["gateway"], w["sensor"], w["start_ns"]): {k: v for k, v in w.items() if k != "stored_ns"}
        for w in rows
    }


def test_two_shards_equal_one_shard_and_the_reference(tmp_path: Path) -> None:
    """2 parties × 2 workers: every window, flag and fleet row as with K = 1."""
    scn = make_scenario()
    shards = {(s.gateway, s.sensor): shard_of(2)(s.gateway, s.sensor) for s in scn.streams}
    assert set(shards.values()) == {0, 1}, "the scenario must put streams in both shards"
    two = _run(tmp_path / "k2", scn, 2)
    one = _run(tmp_path / "k1", scn, 1)

    # the same epochs, once per shard holding streams of it
    assert sorted({e["start_ns"] for e in two["epochs"]}) == sorted(
        e["start_ns"] for e in one["epochs"]
    )
    assert sorted((e["shard"], e["start_ns"]) for e in two["epochs"]) == [
        (k, T0 + e * 10 * SECOND) for k in (0, 1) for e in range(3)
    ]
    # windows: identical, except a deviation flag whose reference margin is borderline
    results = reference(scn)
    fmargin, fband = _margin_map(results, "fleet"), _margin_map(results, "fleet_band")
    w1, w2 = _windows(one["windows"]), _windows(two["windows"])
    assert set(w1) == set(w2)
    for key, row in w1.items():
        near = key in fmargin and abs(fmargin[key]) <= fband[key]
        assert {k: v for k, v in w2[key].items() if not near or k != "deviates_from_fleet"} == {
            k: v for k, v in row.items() if not near or k != "deviates_from_fleet"
        }, key
    # flags: identical, except z-score flags on a borderline margin
    zmargin, zband = _margin_map(results, "zscore"), _margin_map(results, "zscore_band")
    a1 = sorted((a["gateway"], a["sensor"], a["ts_ns"], a["detector"]) for a in one["alerts"])
    a2 = sorted((a["gateway"], a["sensor"], a["ts_ns"], a["detector"]) for a in two["alerts"])
    assert a1, "the scenario flags readings"
    differ = set(a1) ^ set(a2)
    assert all(a[3] == "zscore" and abs(zmargin[a[:3]]) <= zband[a[:3]] for a in differ)
    if not differ:
        assert a1 == a2  # duplicates of a timestamp too
    # fleet rows: identical (the class lives in one shard)
    assert two["fleet"] == one["fleet"]
    assert two["fleet"], "the scenario releases fleet rows"

    # health: every worker names its shard; the output lists the progress of each shard
    assert {(h["party"], h["shard"], h["shards"]) for h in two["workers"].values()} == {
        (i, k, 2) for i in range(2) for k in range(2)
    }
    progress = two["health"]["shards"]
    assert [(p["shard"], p["last_epoch_ns"]) for p in progress] == [
        (0, T0 + 20 * SECOND),
        (1, T0 + 20 * SECOND),
    ]
    assert all(p["lag_s"] > 0 for p in progress)
    assert [p["shard"] for p in one["health"]["shards"]] == [0]
    for cluster in two["clusters"]:
        assert [(s["shard"], s["last_epoch_ns"]) for s in cluster["shards"]] == [
            (0, T0 + 20 * SECOND),
            (1, T0 + 20 * SECOND),
        ]
    print({"k1": one["summary"], "k2": two["summary"], "flag_differences": len(differ)})
    assert one["cross_shard"] == two["cross_shard"] == 0


def test_a_fleet_class_split_over_shards_is_refused_and_counted(tmp_path: Path) -> None:
    """A wrong shard map puts the temperature class in both shards: no fleet row is stored,
    no window keeps a deviation flag, each epoch is counted; the windows stay exact."""

    def wrong(gateway: str, sensor: str) -> int:
        if sensor.startswith("temp"):
            return GATEWAYS.index(gateway) % 2  # the class split by gateway
        return shard_of(2)(gateway, sensor)

    scn = make_scenario(seconds=20)
    out = _run(tmp_path, scn, 2, wrong)
    assert out["fleet"] == []
    temps = [w for w in out["windows"] if w["sensor"] == "temp1"]
    assert len(temps) == 2 * len(GATEWAYS)
    assert all(w["deviates_from_fleet"] is None for w in temps)
    assert out["cross_shard"] == 2  # once per epoch: the second shard's release finds the first
    want = {
        (w["gateway"], w["sensor"], w["start_ns"]): w.get("mean")
        for r in reference(scn)
        for w in r.released.windows
    }
    assert {(w["gateway"], w["sensor"], w["start_ns"]): w["mean"] for w in out["windows"]} == want
