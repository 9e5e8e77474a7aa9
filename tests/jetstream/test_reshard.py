"""Resharding by a map change (processes): 2 parties × 2 shard workers, JetStream, frontends.

Each party has its own NATS node (its own KV: its own shard map), one ingest
frontend and a worker per shard; a dealer per shard and the output. Mid-stream
the operator moves one stream and the fleet class to the other shard with
``tecc-cluster admin shard-map set`` in both parties, effective from the epoch
at 20 s: the frontends and workers pick the new version up without a restart,
readings from 20 s on are stored and analysed by the new shard's workers, and
every released window and fleet row equals the plaintext reference. Then the
parties hold different map versions for the epoch at 40 s (same routing, another
version number at party 1): every worker refuses that epoch (counted, the reason
logged) until party 0 is given the very version party 1 holds
(``set --replace``), and then it is released.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc import admin
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.jetstream import epochlog
from cloud_tecc.jetstream.server import NatsDeployment, start_node
from cloud_tecc.party.shardmap import ShardMap
from tests.cloud.scenario import (
    GATEWAYS,
    POLICY,
    SECOND,
    T0,
    gateways,
    make_scenario,
    reference,
)
from tests.cloud.services import Deployment, http_json, metric

from .logstack import health, start_frontends, upload_through, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.slow]
SECONDS = 50
MOVED = ("gw-a", "press1")
CLASS = "temperature"


def _map_version(dep: Deployment, names: list[str], version: int) -> bool:
    return all(health(dep, n)["shard_map"]["version"] == version for n in names)


def _set(
    dep: Deployment, party: int, capsys: pytest.CaptureFixture[str], *argv: str
) -> dict[str, Any]:
    code = admin.main(["--config", str(dep.root / f"party{party}.yaml"), "shard-map", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads(out))


def _stream_rows(dep: Deployment, worker: str, sql: str, stream: tuple[str, str]) -> list[Any]:
    """Rows of ``sql`` (parameters: gateway, sensor) in a worker's share store."""
    con = sqlite3.connect(dep.state_dir(worker) / "shares.db", timeout=10)
    try:
        return con.execute(sql, stream).fetchall()
    finally:
        con.close()


def _readings(dep: Deployment, worker: str, stream: tuple[str, str]) -> list[int]:
    """Timestamps of ``stream``'s readings in a worker's share store."""
    sql = "SELECT ts FROM segments WHERE gateway = ? AND sensor = ?"
    rows = _stream_rows(dep, worker, sql, stream)
    return sorted(int(t) for (blob,) in rows for t in np.frombuffer(blob, "<i8"))


def _state_epochs(dep: Deployment, worker: str, stream: tuple[str, str]) -> list[int]:
    """Epochs after which a worker holds detector state of ``stream`` (it analysed them)."""
    sql = "SELECT epoch_ns FROM stream_state WHERE gateway = ? AND sensor = ?"
    return sorted(int(e) for (e,) in _stream_rows(dep, worker, sql, stream))


def _logged_maps(node: NatsDeployment, shard: int) -> dict[int, str]:
    """Epoch end → the shard map version recorded with it in the party's epoch log."""

    async def read() -> dict[int, str]:
        nc = await nats.connect(servers=node.servers, connect_timeout=2)
        try:
            got: dict[int, str] = {}

            async def keep(epochs: list[epochlog.EpochWire]) -> None:
                got.update((epoch.end_ns, epoch.map) for epoch in epochs)

            await epochlog.replay(nc.jetstream(), shard, 10**9, keep)
            return got
        finally:
            await nc.close()

    return asyncio.run(read())


def _released(dep: Deployment, before_ns: int) -> tuple[dict[Any, Any], dict[Any, Any]]:
    _, windows = http_json(dep.url("output") + "/api/v1/windows")
    _, fleet = http_json(dep.url("output") + "/api/v1/fleet")
    w = {
        (r["gateway"], r["sensor"], r["start_ns"]): r for r in windows if r["start_ns"] < before_ns
    }
    f = {(r["class"], r["start_ns"]): r for r in fleet if r["start_ns"] < before_ns}
    return w, f


def _check(dep: Deployment, want: list[Any], before_ns: int) -> int:
    """Every window and fleet row before ``before_ns`` equals the reference; how many."""
    want_w = {
        (w["gateway"], w["sensor"], w["start_ns"]): w
        for r in want
        for w in r.released.windows
        if w["start_ns"] < before_ns
    }
    want_f = {
        (f["class"], f["start_ns"]): f
        for r in want
        for f in r.released.fleet
        if f["start_ns"] < before_ns
    }
    wait_for(lambda: set(_released(dep, before_ns)[0]) == set(want_w), 120, "windows released")
    wait_for(lambda: set(_released(dep, before_ns)[1]) == set(want_f), 30, "fleet released")
    got_w, got_f = _released(dep, before_ns)
    for key, w in want_w.items():
        for field in ("count", "mean", "std", "min", "max"):
            assert got_w[key][field] == w.get(field), (key, field)
    for fkey, row in want_f.items():
        for field in ("count", "mean", "std"):
            assert got_f[fkey][field] == row.get(field), (fkey, field)
    return len(got_w)


def test_a_map_change_moves_a_stream_and_a_mismatch_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = policy_from_mapping(POLICY)
    old = ShardMap.for_policy(2, policy)
    home = old.shard_of(*MOVED)
    class_home = old.shard_of("gw-a", "temp1")
    scn = make_scenario(seconds=SECONDS)
    want = reference(scn)
    nodes: list[NatsDeployment] = [start_node(tmp_path / f"nats-party{i}") for i in range(2)]
    overrides = {
        (f"party{i}" if k == 0 else f"party{i}-s{k}"): {"jetstream": {"servers": nodes[i].servers}}
        for i in range(2)
        for k in range(2)
    }
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    dep = Deployment(tmp_path, POLICY, keys, party_overrides=overrides, shards=2)
    try:
        dep.start_all()
        fes = [dep.add_frontend(p) for p in dep.parties]
        start_frontends(dep, fes, on_log=False)
        everyone = [*fes, *dep.workers]
        wait_for(lambda: _map_version(dep, everyone, 1), 30, "map version 1 everywhere")
        gws = gateways(dep)
        upload_through(dep, fes, gws, scn, range(15))

        # -- move a stream and the fleet class, in both parties, from the epoch at 20 s
        at = T0 + 20 * SECOND
        change = (
            "--stream",
            f"{'/'.join(MOVED)}={1 - home}",
            "--class",
            f"{CLASS}={1 - class_home}",
        )
        done = [_set(dep, i, capsys, "set", *change, "--at", str(at)) for i in range(2)]
        assert done[0]["id"] == done[1]["id"]  # the same change makes the same version
        wait_for(lambda: _map_version(dep, everyone, 2), 30, "map version 2 everywhere")
        upload_through(dep, fes, gws, scn, range(15, 40))
        assert _check(dep, want, T0 + 40 * SECOND) == 4 * 12  # 3 sensors of 4 gateways
        for i in range(2):
            before = _readings(dep, dep.worker(i, home), MOVED)
            after = _readings(dep, dep.worker(i, 1 - home), MOVED)
            assert before
            assert max(before) < at, "the old shard holds the stream until 20 s"
            assert after
            assert min(after) >= at, "the new shard holds it from 20 s"
            # ... and analysed it: its detector state there is of the epochs after 20 s
            assert min(_state_epochs(dep, dep.worker(i, 1 - home), MOVED)) > at
            assert max(_state_epochs(dep, dep.worker(i, home), MOVED)) <= at
            temps = _readings(dep, dep.worker(i, 1 - class_home), ("gw-c", "temp1"))
            assert temps
            assert min(temps) >= at
            assert max(_readings(dep, dep.worker(i, class_home), ("gw-c", "temp1"))) < at

        # -- the same routing under another version in party 1 (its map went through one
        # more version): the epoch from the boundary is refused by both, counted, logged
        at2 = T0 + 40 * SECOND
        move = ("--stream", f"gw-b/press1={home}", "--at", str(at2))
        third = _set(dep, 0, capsys, "set", *move)
        fourth = _set(dep, 1, capsys, "set", *move, "--version", "4")
        assert third["id"] != fourth["id"]
        wait_for(lambda: _map_version(dep, [fes[0], *dep.workers[::2]], 3), 30, "party 0 at v3")
        wait_for(lambda: _map_version(dep, [fes[1], *dep.workers[1::2]], 4), 30, "party 1 at v4")
        upload_through(dep, fes, gws, scn, range(40, SECONDS))
        wait_for(
            lambda: all(metric(dep, w, "tecc_party_map_mismatch_total") >= 1 for w in dep.workers),
            60,
            "every worker refusing the epoch at 40 s",
        )
        _, epochs = http_json(dep.url("output") + "/api/v1/epochs")
        assert not [e for e in epochs if e["start_ns"] >= at2]
        assert "shard map mismatch" in dep.log_path(dep.worker(1, 0)).read_text()
        # party 0's operator gives it the version party 1 holds: the epoch goes through
        same = fourth["every_other_party"].split("shard-map set ", 1)[1].split()
        assert "--version" in same
        fixed = _set(dep, 0, capsys, "set", "--replace", *same[-4:])
        assert fixed["id"] == fourth["id"]
        assert _check(dep, want, T0 + SECONDS * SECOND) == 5 * 12
        # the operator tool refuses to replace a version epochs were committed under
        code = admin.main(["--config", str(dep.root / "party0.yaml"), "shard-map", "set",
                           "--stream", "gw-c/press1=0", "--replace", "--at", str(at2)])  # fmt: skip
        assert code == 2
        assert "committed already" in capsys.readouterr().err
        # the epoch log of each party names the version every epoch was computed under
        ids = {1: None, 2: done[0]["id"], 4: fourth["id"]}
        for i in range(2):
            for k in range(2):
                logged = _logged_maps(nodes[i], k)
                assert logged, (i, k)
                for end, map_id in logged.items():
                    version = 1 if end <= at else 2 if end <= at2 else 4
                    assert map_id.startswith(f"{version}:"), (i, k, end, map_id)
                    assert ids[version] in (None, map_id)
    finally:
        dep.stop_all()
        for n in nodes:
            n.stop()
