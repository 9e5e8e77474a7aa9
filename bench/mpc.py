"""MPC engine benchmark: comparisons and z-score flags, parties and dealer as processes.

``python -m bench.mpc [--quick] [--elements N] [--parties N]``

Phase 1: secret-vs-secret less-than on N elements per call, repeated; the rate
is the mean over all calls but the first (the first call of a fresh process
also pays for the allocator growing its heap: reported as ``*_first_call_s``). The dealer process
generates the correlations, the parties fetch and expand them first (offline),
then time the online phase of each call over loopback WebSockets.
Phase 2: z-score flags ``(x − μ)² > k²σ²`` with secret μ, σ²: one multiply, one
truncation, one comparison. Plaintext numpy baselines run on the same data in
this process.
Phase 3 (:mod:`bench.mpc_links`): link handshake and round cost with the
hybrid ML-KEM-768 + X25519 key agreement vs X25519 alone, as ratios.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.mesh.localmesh import LocalMesh, wait_all
from bench.mesh.programs import plan_for
from bench.mpc_links import bench_links
from cloud_tecc.mpc import reveal, share
from tecc_contract.fixedpoint import FixedPoint

FP = FixedPoint()


def _best(fn: Callable[[], object], reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _run(
    root: Path,
    n: int,
    program: str,
    k: int,
    reps: int,
    shared: dict[str, Any],
    public: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any], LocalMesh]:
    d = root / program
    d.mkdir()
    mesh = LocalMesh.create(d, n)
    mesh.write_inputs(shared, public | {"reps": np.array([reps], dtype=np.uint64)})
    dealer = mesh.spawn_dealer(plan_for(program, k), batches=reps)
    parties = [mesh.spawn_party(i, program, prefetch=reps, timeout=60) for i in range(n)]
    reports = wait_all([*parties, dealer], timeout=300)
    return reports[:n], reports[n], mesh


def bench_lt(root: Path, n: int, k: int, reps: int) -> dict[str, Any]:
    """Phase 1: comparisons."""
    rng = np.random.default_rng(1)
    x = FP.encode(rng.uniform(-1e4, 1e4, k))
    y = FP.encode(rng.uniform(-1e4, 1e4, k))
    parties, dealer, mesh = _run(
        root, n, "bench_lt", k, reps, {"x": share(x, n), "y": share(y, n)}, {}
    )
    got = reveal([mesh.outputs(i)["lt"] for i in range(n)])
    xi, yi = x.view(np.int64), y.view(np.int64)
    ok = bool(np.array_equal(got, (xi < yi).astype(np.uint64)))
    plain = _best(lambda: xi < yi)
    online = max(float(p["mean_s"]) for p in parties)
    return {
        "comparisons_per_s": k / online,
        "comparison_best_call_s": max(float(p["best_s"]) for p in parties),
        "comparison_first_call_s": max(float(p["first_s"]) for p in parties),
        "comparison_mean_call_s": online,
        "dealer_comparisons_per_s": dealer["comparisons"] / dealer["deliver_span_s"],
        "dealer_generate_only_comparisons_per_s": dealer["comparisons"] / dealer["generate_s"],
        "party_offline_s_per_batch": max(float(p["offline_s"]) for p in parties) / reps,
        "plaintext_comparisons_per_s": k / plain,
        "comparison_rounds": int(parties[0]["rounds"]) // reps,
        "comparison_bytes_per_element_per_party": int(parties[0]["bytes_sent"]) / reps / k,
        "comparison_correct": ok,
    }


def bench_zscore(root: Path, n: int, k: int, reps: int) -> dict[str, Any]:
    """Phase 2: z-score flags with a secret baseline."""
    rng = np.random.default_rng(2)
    mu_v = rng.uniform(-50, 50, 64)
    sd_v = rng.uniform(0.5, 5, 64)
    sensor = rng.integers(0, 64, k)
    xv = rng.normal(mu_v[sensor], sd_v[sensor] * 1.5)
    x, mu, var = FP.encode(xv), FP.encode(mu_v[sensor]), FP.encode(sd_v[sensor] ** 2)
    k2 = np.array([FP.encode_scalar(9.0)], dtype=np.uint64)
    shared = {"x": share(x, n), "mu": share(mu, n), "var": share(var, n)}
    parties, _, mesh = _run(root, n, "bench_zscore", k, reps, shared, {"k2": k2})
    got = reveal([mesh.outputs(i)["flags"] for i in range(n)])
    xi, mi, vi = x.view(np.int64), mu.view(np.int64), var.view(np.int64)
    k2i = int(k2.view(np.int64)[0])

    def plain() -> Any:
        d = xi - mi
        return (d * d) >> 16 > (vi * k2i) >> 16

    want = plain()
    mismatch = int(np.count_nonzero(got != want.astype(np.uint64)))
    online = max(float(p["mean_s"]) for p in parties)
    return {
        "zscore_readings_per_s": k / online,
        "zscore_first_call_s": max(float(p["first_s"]) for p in parties),
        "zscore_mean_call_s": online,
        "plaintext_zscore_readings_per_s": k / _best(plain),
        "zscore_rounds": int(parties[0]["rounds"]) // reps,
        "zscore_bytes_per_element_per_party": int(parties[0]["bytes_sent"]) / reps / k,
        "zscore_flag_rate": float(want.mean()),
        # Truncation may be one LSB off, which can flip a flag only at a tie.
        "zscore_mismatches_vs_plaintext": mismatch,
    }


def main() -> None:
    """Run both phases and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 60 s)")
    ap.add_argument("--elements", type=int, default=1_000_000)
    ap.add_argument("--parties", type=int, default=2)
    args = ap.parse_args()
    reps = 3 if args.quick else 7  # the first call of each phase is reported apart
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-mpc-") as tmp:
        root = Path(tmp)
        out: dict[str, Any] = {"parties": args.parties, "elements_per_call": args.elements}
        out |= bench_lt(root, args.parties, args.elements, reps)
        out |= bench_zscore(root, args.parties, args.elements, max(2, reps - 2))
    out |= bench_links(args.quick)
    out["ratio_comparisons_vs_plaintext"] = (
        out["plaintext_comparisons_per_s"] / out["comparisons_per_s"]
    )
    out["ratio_zscore_vs_plaintext"] = (
        out["plaintext_zscore_readings_per_s"] / out["zscore_readings_per_s"]
    )
    out["bench_wall_s"] = time.perf_counter() - t0
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
