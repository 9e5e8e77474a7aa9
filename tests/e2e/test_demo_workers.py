"""``python -m demo --workers 2`` for real: each cluster as JetStream, a frontend, two shards.

The whole pipeline as processes with each party in the JetStream layout: a
NATS JetStream node of its own, one ingest frontend the gateways upload to,
and two shard workers (a dealer per shard). Every gateway names the
frontends, both shards of both parties hold their parts of the batches, and
the output releases epochs of both shards.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from demo.pipeline import ROOT
from demo.services import free_port

pytestmark = [
    pytest.mark.processes,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.opcua,
    pytest.mark.slow,
]


def _rows(db: Path, sql: str) -> list[tuple[int, ...]]:
    con = sqlite3.connect(db)
    try:
        return [tuple(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


def test_demo_with_two_workers_per_cluster_releases_both_shards(tmp_path: Path) -> None:
    """40 s of the demo with --workers 2: 2/2 attested, both shards computed and released."""
    state = tmp_path / "state"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            *("--state", str(state), "--fresh", "--duration", "40", "--workers", "2"),
            *("--port", str(free_port())),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "clusters attested 2/2" in done.stdout, done.stdout
    cloud = state / "cloud"
    frontends = {
        i: yaml.safe_load((cloud / f"party{i}-ingest0.yaml").read_text())["listen"]["port"]
        for i in range(2)
    }
    for gw in ("gw1", "gw2"):
        doc = yaml.safe_load((state / gw / "gateway.yaml").read_text())
        urls = {c["index"]: c["url"] for c in doc["clusters"]}
        assert urls == {i: f"https://127.0.0.1:{frontends[i]}" for i in range(2)}
    for name in ("party0", "party0-s1", "party1", "party1-s1"):
        cfg = yaml.safe_load((cloud / f"{name}.yaml").read_text())
        assert cfg["jetstream"]["servers"], name
        assert cfg.get("shards") == 2
    # every worker holds its shard's parts, the same at both parties (one log each)
    held = {
        name: _rows(cloud / name / "shares.db", "SELECT count(*), sum(count) FROM batches")[0]
        for name in ("party0", "party1", "party0-s1", "party1-s1")
    }
    for shard in ("", "-s1"):
        a, b = held[f"party0{shard}"][1], held[f"party1{shard}"][1]
        assert min(a, b) > 100, held
        assert abs(a - b) <= 0.1 * max(a, b), held
    rows = _rows(
        cloud / "output" / "results.db", "SELECT shard, count(*) FROM epochs GROUP BY shard"
    )
    epochs = {r[0]: r[1] for r in rows}
    assert set(epochs) == {0, 1}, epochs
    assert min(epochs.values()) >= 5, epochs
