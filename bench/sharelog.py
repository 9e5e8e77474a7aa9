"""Ingest through the JetStream layout against the all-in-one party, in the same run.

``python -m bench.sharelog [--quick]`` prints progress to stderr and, as the
last line of stdout, one JSON object:

* ``party_readings_per_s`` — envelopes of 1000 readings acked per second by one
  all-in-one party process (``bench.cloud``'s ingest: HTTPS, SQLite commit);
* ``frontend_readings_per_s`` / ``frontends2_readings_per_s`` — acked per
  second by one / two ingest frontends publishing to the party's embedded
  JetStream node (a worker consuming at the same time);
* ``stored_readings_per_s`` — from the first upload to the last part in the
  worker's store (two frontends);
* ``frontend_vs_party`` / ``frontends2_vs_party`` — the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.cloud import bench_ingest
from bench.cloud_data import POLICY, ingest_frames, log, post_all
from demo.devstack.deployment import Deployment, http_json


def _stored(dep: Deployment) -> int:
    conn = sqlite3.connect(dep.state_dir("party0") / "shares.db", timeout=10)
    try:
        return int(conn.execute("SELECT COALESCE(SUM(count), 0) FROM batches").fetchone()[0])
    finally:
        conn.close()


def bench_frontends(root: Path, batches: int, frontends: int) -> tuple[float, float]:
    """(acked readings/s, readings/s into the worker's store) through ``frontends``."""
    root.mkdir(parents=True, exist_ok=True)
    dep = Deployment(
        root,
        POLICY,
        {"gw0": Ed25519PrivateKey.generate()},
        party_overrides={"party0": {"jetstream": {"embedded": True}}},
    )
    dep.start("party0")
    try:
        dep.wait_healthy("party0")
        fes = [dep.add_frontend("party0") for _ in range(frontends)]
        for fe in fes:
            dep.start(fe)
        for fe in fes:
            dep.wait_healthy(fe)
            while not http_json(dep.url(fe) + "/healthz")[1]["log_connected"]:
                time.sleep(0.1)
        frames = ingest_frames(dep, batches)

        async def upload(part: list[bytes], concurrency: int) -> float:
            jobs = [
                post_all(f"{dep.url(fe)}/v1/batches", part[j::frontends], concurrency)
                for j, fe in enumerate(fes)
            ]
            t0 = time.perf_counter()
            await asyncio.gather(*jobs)
            return time.perf_counter() - t0

        asyncio.run(upload(frames[:20], 8))  # warm-up
        t0 = time.perf_counter()
        dt = asyncio.run(upload(frames[20:], 32 // frontends))
        while _stored(dep) < batches * 1000:
            time.sleep(0.05)
        stored_dt = time.perf_counter() - t0
        return (batches - 20) * 1000 / dt, (batches - 20) * 1000 / stored_dt
    finally:
        dep.stop_all()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON result is the last stdout line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, under 60 s")
    q = ap.parse_args(argv).quick
    n = 300 if q else 2000
    runs: dict[str, list[float]] = {"party": [], "fe1": [], "fe2": [], "stored": []}
    with tempfile.TemporaryDirectory(prefix="bench-sharelog-") as tmp:
        root = Path(tmp)
        for k in range(1 if q else 3):  # alternating, best of each
            log(f"round {k}: all-in-one party")
            runs["party"].append(bench_ingest(root / f"party-{k}", n))
            log(f"round {k}: one frontend")
            runs["fe1"].append(bench_frontends(root / f"fe1-{k}", n, 1)[0])
            log(f"round {k}: two frontends")
            acked, stored = bench_frontends(root / f"fe2-{k}", n, 2)
            runs["fe2"].append(acked)
            runs["stored"].append(stored)
    best = {k: max(v) for k, v in runs.items()}
    result = {
        "quick": q,
        "party_readings_per_s": round(best["party"]),
        "frontend_readings_per_s": round(best["fe1"]),
        "frontends2_readings_per_s": round(best["fe2"]),
        "stored_readings_per_s": round(best["stored"]),
        "frontend_vs_party": round(best["fe1"] / best["party"], 3),
        "frontends2_vs_party": round(best["fe2"] / best["party"], 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
