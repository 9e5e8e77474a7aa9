"""Parties and dealer as real processes over loopback WebSockets match the in-memory run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.mesh.localmesh import LocalMesh, wait_all
from bench.mesh.programs import plan_for, suite
from cloud_tecc.mpc import Party, Plan, reveal, run_parties, share
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray

FP = FixedPoint()
EXACT = ("lt", "msb", "lt_public", "min", "max", "mul", "square", "tree_min", "select")


def _inputs(k: int) -> tuple[RingArray, RingArray]:
    rng = np.random.default_rng(11)
    xv = rng.uniform(-1000, 1000, k)
    yv = rng.uniform(-1000, 1000, k)
    xv[:6] = [0.0, FP.lsb, -FP.lsb, 2.0**30, -(2.0**30), -5.0]
    yv[:6] = [0.0, 0.0, 0.0, 2.0**30, 0.0, -5.0 + FP.lsb]
    return FP.encode(xv), FP.encode(yv)


@pytest.mark.processes
@pytest.mark.parametrize("n", [2, 3])
def test_processes_match_memory(tmp_path: Path, n: int) -> None:
    """The suite over WebSockets between n party processes and a dealer process."""
    k = 4096
    x, y = _inputs(k)
    xs, ys = share(x, n), share(y, n)
    mesh = LocalMesh.create(tmp_path, n)
    mesh.write_inputs({"x": xs, "y": ys}, {})
    dealer = mesh.spawn_dealer(plan_for("suite", k), batches=1)
    parties = [mesh.spawn_party(i, "suite", prefetch=1, timeout=30) for i in range(n)]
    reports = wait_all([*parties, dealer], timeout=120)
    remote = {name: reveal([mesh.outputs(i)[name] for i in range(n)]) for name in mesh.outputs(0)}

    async def fn(p: Party) -> dict[str, RingArray]:
        out, _ = await suite(p, {"x": xs[p.index], "y": ys[p.index]})
        return out

    local_shares: list[dict[str, Any]] = asyncio.run(run_parties(n, fn))
    local = {name: reveal([s[name] for s in local_shares]) for name in local_shares[0]}
    for name in EXACT:
        np.testing.assert_array_equal(remote[name], local[name], err_msg=name)
    xi, yi = x.view(np.int64), y.view(np.int64)
    np.testing.assert_array_equal(remote["lt"], (xi < yi).astype(np.uint64))
    np.testing.assert_array_equal(remote["square"], x * x)
    np.testing.assert_array_equal(remote["min"].view(np.int64), np.minimum(xi, yi))
    np.testing.assert_array_equal(remote["tree_min"].view(np.int64), xi.reshape(-1, 4).min(1))
    for out in (remote, local):
        err = out["trunc"].view(np.int64) - (xi >> 16)
        assert set(np.unique(err).tolist()) <= {0, 1}
    assert all(r["rounds"] == reports[0]["rounds"] for r in reports[:n])


@pytest.mark.processes
def test_lost_peer_is_reported(tmp_path: Path) -> None:
    """A party whose peer never starts fails with PeerLostError instead of hanging."""
    mesh = LocalMesh.create(tmp_path, 2)
    x = FP.encode(np.zeros(8))
    mesh.write_inputs({"x": share(x, 2), "y": share(x, 2)}, {})
    dealer = mesh.spawn_dealer(plan_for("suite", 8), batches=1)
    lone = mesh.spawn_party(0, "suite", prefetch=1, timeout=3)
    _, err = lone.communicate(timeout=60)
    dealer.kill()
    dealer.communicate()
    assert lone.returncode == 2
    assert "PeerLostError" in err


def test_traced_bench_plans_match_the_programs_by_hand() -> None:
    """One square, two truncations, one comparison per reading: the z-score's trace."""
    assert plan_for("bench_zscore", 8192) == Plan(comparisons=8192, squares=8192, truncs=16384)
    assert plan_for("bench_lt", 1000) == Plan(comparisons=1000)
    # suite: lt, msb, lt_public, min, max compare; min, max, mul, select multiply;
    # square squares; the 4-wide tree min adds 3 comparisons and products per group of four.
    assert plan_for("suite", 400) == Plan(
        comparisons=5 * 400 + 300, triples=4 * 400 + 300, truncs=400, squares=400
    )
