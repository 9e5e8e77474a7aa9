"""Cloud benchmark: ingest, secure analytics and window latency with real processes.

``python -m bench.cloud [--quick]`` prints progress to stderr and, as the last
line of stdout, one JSON object:

* ``ingest_readings_per_s`` — envelopes of 1000 readings (value + x² columns)
  verified, opened and durably stored per second by one party process, with
  concurrent uploads;
* ``analytics_readings_per_s`` — readings per second of epoch processing
  (window statistics, min/max, limits, rate of change, rolling z-score, fleet)
  through both parties and the dealer as separate processes, from the
  parties' own epoch timings;
* ``plaintext_analytics_readings_per_s`` — the numpy reference of the same
  algorithm on the same data, in this process;
* ``window_latency_ms_p99`` — end of a window to its results stored at the
  output service, for a live stream with 1-second windows.

``python -m bench.cloud --parties 2,3,4 [--quick]`` instead runs the same
readings through a deployment of each N (N parties, dealer and output as
processes; :mod:`bench.cloud_parties`) and reports, per N, the CPU time per
reading of all cloud processes together (from ``/proc``), MPC rounds per
epoch and mesh bytes per reading per party, with the ratios against N = 2.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.cloud_data import (
    POLICY,
    cloud_args,
    data,
    ingest_frames,
    log,
    metric,
    post_all,
    sealer_for,
    upload_streams,
    wait_epochs,
)
from bench.cloud_parties import run_parties
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from demo.devstack.deployment import Deployment
from tecc_contract.envelope import SensorSegment


def bench_ingest(root: Path, batches: int, *, tls: bool = True) -> float:
    """Ingest throughput of one party process (its peers are not started).

    ``tls``: over its HTTPS listener (the default), else with ``tls: off``.
    """
    root.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {} if tls else {"tls": False}
    dep = Deployment(root, POLICY, {"gw0": Ed25519PrivateKey.generate()}, party_extra=extra)
    dep.start("party0")
    try:
        dep.wait_healthy("party0")
        frames = ingest_frames(dep, batches)
        asyncio.run(post_all(f"{dep.url('party0')}/v1/batches", frames[:20], 8))  # warm-up
        dt = asyncio.run(post_all(f"{dep.url('party0')}/v1/batches", frames[20:], 32))
        return (batches - 20) * 1000 / dt
    finally:
        dep.stop_all()


def analytics_deployment(
    root: Path, gateways: int, policy: dict[str, Any] | None = None
) -> Deployment:
    """The deployment of the analytics measurement: 2 parties, dealer, output (not started)."""
    gws = {f"gw{g}": Ed25519PrivateKey.generate() for g in range(gateways)}
    return Deployment(root, policy or POLICY, gws, party_extra={"tick_s": 0.05})


def measure_analytics(dep: Deployment, streams: list[StreamReadings], secs: int) -> tuple[int, int]:
    """``analytics_readings_per_s`` and the readings analysed, on a deployment not yet started.

    The parties and the output service start, every reading is uploaded and
    declared, then the dealer starts (sessions, and computation, begin once it
    attests); the rate is party 0's readings over its own epoch seconds
    (``tecc_party_epoch_seconds_sum``). The caller stops the deployment.
    """
    for name in ("party0", "party1", "output"):
        dep.start(name)
    for name in ("party0", "party1", "output"):
        dep.wait_healthy(name)
    log(f"uploading {sum(len(s.values) for s in streams)} readings")
    upload_streams(dep, streams, 0.5)
    dep.start("dealer")
    dep.wait_healthy("dealer")
    log("waiting for the secure analytics")
    wait_epochs(dep, secs, 120)
    busy = metric(dep, "party0", "tecc_party_epoch_seconds_sum")
    done = metric(dep, "party0", "tecc_party_epoch_readings_total")
    return (round(done / busy) if busy else 0), int(done)


async def live_stream(
    dep: Deployment, seconds: float, gateways: int, sensors: int, hz: int
) -> None:
    """Send current-time readings every 100 ms from each gateway to every party."""
    sealers = {f"gw{g}": sealer_for(dep, f"gw{g}") for g in range(gateways)}
    rng = np.random.default_rng(1)
    per = hz // 10
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as s:
        t_end = time.time() + seconds
        seq = 1_000_000
        while time.time() < t_end:
            tick = time.time_ns()
            ts = tick - 100_000_000 + np.arange(per, dtype=np.int64) * (100_000_000 // per)
            for sealer in sealers.values():
                segs = [
                    SensorSegment(f"s{k}", ts, 50.0 + rng.normal(0, 1, per)) for k in range(sensors)
                ]
                frames = sealer.seal(seq, segs, created_ns=tick)
                for i in range(dep.n_parties):
                    async with s.post(f"{dep.url(f'party{i}')}/v1/batches", data=frames[i]) as r:
                        await r.read()
            # as a gateway does: every reading before `tick` is delivered
            await asyncio.to_thread(dep.declare, tick)
            seq += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.time_ns() - tick) / 1e9))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON result is the last stdout line."""
    ap = cloud_args(__doc__)
    ap.add_argument(
        "--parties",
        default="",
        help="compare N-party deployments instead, e.g. 2,3,4 (CPU, rounds, bytes per N)",
    )
    args = ap.parse_args(argv)
    q = args.quick
    if args.parties:
        ns = [int(x) for x in args.parties.split(",") if x.strip()]
        print(json.dumps(run_parties(ns, quick=q, keep=args.keep)))
        return 0
    result: dict[str, Any] = {"quick": q}
    with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        log("ingest, HTTPS and plain HTTP alternating")
        runs: dict[bool, list[float]] = {True: [], False: []}
        for k in range(2 if q else 3):
            for tls in (True, False):
                where = root / f"ingest-{'tls' if tls else 'plain'}-{k}"
                runs[tls].append(bench_ingest(where, 500 if q else 3000, tls=tls))
        result["ingest_readings_per_s"] = round(max(runs[True]))
        result["ingest_plain_http_readings_per_s"] = round(max(runs[False]))
        result["ingest_tls_vs_plain"] = round(max(runs[True]) / max(runs[False]), 3)
        gateways, sensors, hz, secs = (4, 10, 2500, 6) if q else (8, 10, 2500, 20)
        streams = data(gateways, sensors, hz, secs)
        total = sum(len(s.values) for s in streams)
        log(f"plaintext reference on {total} readings")
        t0 = time.perf_counter()
        run_reference(policy_from_mapping(POLICY), streams)
        result["plaintext_analytics_readings_per_s"] = round(total / (time.perf_counter() - t0))
        (root / "mpc").mkdir()
        dep = analytics_deployment(root / "mpc", gateways)
        try:
            rate, done = measure_analytics(dep, streams, secs)
            result["analytics_readings_per_s"] = rate
            result["analytics_readings"] = done
            log("live stream for window latency")
            before = len(wait_epochs(dep, 0, 1))
            asyncio.run(live_stream(dep, 8.0 if q else 30.0, 4, 5, 200))
            time.sleep(2.0)
            epochs = wait_epochs(dep, 0, 1)[before:]
            lat = [(e["stored_ns"] - e["start_ns"] - e["window_ns"]) / 1e6 for e in epochs]
            result["window_latency_ms_p99"] = (
                round(float(np.percentile(lat, 99)), 1) if lat else None
            )
            result["window_latency_ms_p50"] = (
                round(float(np.percentile(lat, 50)), 1) if lat else None
            )
            result["latency_windows"] = len(lat)
        finally:
            dep.stop_all()
    result["analytics_vs_plaintext"] = round(
        result["analytics_readings_per_s"] / result["plaintext_analytics_readings_per_s"], 4
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
