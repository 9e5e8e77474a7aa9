"""MPC engine benchmark: comparisons and z-score flags, parties and dealer as processes.

``python -m bench.mpc [--quick] [--elements N] [--parties 2,3,4]``

Phases 1 and 2 run once per party count in the list (one run, same data).
Per party count ``n`` the JSON carries ``cpu_us_per_reading_n{n}`` (the
z-score program's online CPU per reading, summed over the ``n`` party
processes, every thread of each: ``time.process_time`` around each call),
``rounds_n{n}``, ``bytes_per_element_per_party_n{n}`` (what one party sends on
the mesh per reading, to all its peers together) and
``bytes_per_element_per_peer_n{n}``, ``dealer_bytes_per_element_party0_n{n}``
and ``..._other_n{n}`` (dealer frames received, per reading), the comparison's
``cpu_us_per_comparison_n{n}``, and the ratios against the first count.

Phase 1: secret-vs-secret less-than on N elements per call, repeated; the rate
is the mean over all calls but the first (the first call of a fresh process
also pays for the allocator growing its heap: reported as ``*_first_call_s``). The dealer process
generates the correlations, the parties fetch and expand them first (offline),
then time the online phase of each call over loopback WebSockets.
Phase 2: z-score flags ``(x − μ)² > k²σ²`` with secret μ, σ²: one multiply, one
truncation, one comparison. Plaintext numpy baselines run on the same data in
this process.
Phase 3 (:mod:`bench.mpc_links`): link handshake and round cost with the
hybrid ML-KEM-768 + X25519 key agreement vs X25519 alone, as ratios, and a
link's CPU per byte carried against its AES-256-GCM alone.
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
        "comparison_cpu_us_per_element_all_parties": _cpu_us(parties, k),
    }


def _cpu_us(parties: list[dict[str, Any]], k: int) -> float:
    """Online CPU per element in µs, summed over the party processes."""
    return sum(float(p["cpu_mean_s"]) for p in parties) / k * 1e6


def _per_element(parties: list[dict[str, Any]], key: str, reps: int, k: int) -> float:
    """Mean over parties of ``key`` bytes per element per call."""
    return sum(int(p[key]) for p in parties) / len(parties) / reps / k


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
        "zscore_cpu_us_per_reading_all_parties": _cpu_us(parties, k),
        "zscore_bytes_per_element_per_party_mean": _per_element(parties, "bytes_sent", reps, k),
        "zscore_bytes_per_element_per_peer": int(parties[0]["per_round_total"]) / reps / k,
        "zscore_dealer_bytes_per_element_party0": int(parties[0]["dealer_bytes_received"])
        / reps
        / k,
        "zscore_dealer_bytes_per_element_other": max(
            int(p["dealer_bytes_received"]) for p in parties[1:]
        )
        / reps
        / k,
        "zscore_dealer_bytes_per_batch_other": max(
            int(p["dealer_bytes_received"]) for p in parties[1:]
        )
        / reps,
    }


def _summary(per_n: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The figures per party count, suffixed ``_n{N}``, and ratios against the first count."""
    out: dict[str, Any] = {}
    for n, r in per_n.items():
        out[f"cpu_us_per_reading_n{n}"] = r["zscore_cpu_us_per_reading_all_parties"]
        out[f"cpu_us_per_comparison_n{n}"] = r["comparison_cpu_us_per_element_all_parties"]
        out[f"rounds_n{n}"] = r["zscore_rounds"]
        out[f"comparison_rounds_n{n}"] = r["comparison_rounds"]
        out[f"bytes_per_element_per_party_n{n}"] = r["zscore_bytes_per_element_per_party_mean"]
        out[f"bytes_per_element_per_peer_n{n}"] = r["zscore_bytes_per_element_per_peer"]
        out[f"comparison_bytes_per_element_per_party_n{n}"] = r[
            "comparison_bytes_per_element_per_party"
        ]
        out[f"dealer_bytes_per_element_party0_n{n}"] = r["zscore_dealer_bytes_per_element_party0"]
        out[f"dealer_bytes_per_element_other_n{n}"] = r["zscore_dealer_bytes_per_element_other"]
        out[f"dealer_bytes_per_batch_other_n{n}"] = r["zscore_dealer_bytes_per_batch_other"]
        out[f"comparisons_per_s_n{n}"] = r["comparisons_per_s"]
        out[f"zscore_readings_per_s_n{n}"] = r["zscore_readings_per_s"]
        out[f"correct_n{n}"] = r["comparison_correct"] and r["zscore_mismatches_vs_plaintext"] <= 2
    base = min(per_n)
    b = per_n[base]
    for n, r in per_n.items():
        if n != base:
            out[f"cpu_ratio_n{n}_n{base}"] = (
                r["zscore_cpu_us_per_reading_all_parties"]
                / b["zscore_cpu_us_per_reading_all_parties"]
            )
            out[f"bytes_ratio_n{n}_n{base}"] = (
                r["zscore_bytes_per_element_per_party_mean"]
                / b["zscore_bytes_per_element_per_party_mean"]
            )
            out[f"rounds_equal_n{n}_n{base}"] = (
                r["zscore_rounds"] == b["zscore_rounds"]
                and r["comparison_rounds"] == b["comparison_rounds"]
            )
    return out


def main() -> None:
    """Run both phases and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 60 s)")
    ap.add_argument(
        "--elements",
        type=int,
        default=None,
        help="elements per call (default 1,000,000; 250,000 with --quick and several --parties)",
    )
    ap.add_argument(
        "--parties", default="2", help="party counts to run, comma-separated (e.g. 2,3,4)"
    )
    args = ap.parse_args()
    counts = [int(c) for c in str(args.parties).split(",")]
    if any(c < 2 for c in counts) or len(set(counts)) != len(counts):
        ap.error("--parties: write distinct party counts >= 2, e.g. 2,3,4")
    if args.elements is None:
        args.elements = 250_000 if args.quick and len(counts) > 1 else 1_000_000
    reps = 3 if args.quick else 7  # the first call of each phase is reported apart
    t0 = time.perf_counter()
    per_n: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mpc-") as tmp:
        for n in counts:
            root = Path(tmp) / f"n{n}"
            root.mkdir()
            r = bench_lt(root, n, args.elements, reps)
            per_n[n] = r | bench_zscore(root, n, args.elements, max(2, reps - 2))
    # The unsuffixed figures are those of the first party count (as before).
    out: dict[str, Any] = {"parties": counts[0], "party_counts": counts}
    out |= {"elements_per_call": args.elements, "cpu_measure": "process_time, all threads"}
    out |= per_n[counts[0]] | _summary(per_n)
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
