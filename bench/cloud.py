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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings, run_reference
from cloud_tecc.localstack import LOOPBACK_TLS, Deployment, http_json
from tecc_contract.attestation import Quote
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite

#: Window statistics (count, mean, std, min, max), rolling z-score (W = 600,
#: k = 3) and rate of change; 1-second windows.
POLICY: dict[str, Any] = {
    "window_s": 1.0,
    "min_count": 10,
    "release": ["count", "mean", "std", "min", "max", "zscore_alerts", "rate_alerts"],
    "rates": [{"sensor": "s*", "max_delta": 20.0}],
    "zscore": {"window": 600, "k": 3.0, "min_baseline": 30},
}
T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def log(msg: str) -> None:
    """Progress to stderr."""
    print(f"[bench.cloud] {msg}", file=sys.stderr, flush=True)


def sealer_for(dep: Deployment, gateway: str, parties: tuple[int, ...] = (0, 1)) -> Sealer:
    """A sealer for the parties' quoted HPKE keys (quotes parsed, trust assumed)."""
    keys = []
    for i in parties:
        _, body = http_json(f"{dep.url(f'party{i}')}/attestation?nonce={'00' * 32}")
        q = Quote.from_json(body)
        keys.append(ClusterKey(i, KemSuite(q.hpke_suite), q.keys["hpke"]))
    if len(keys) == 1:  # ingest phase: a second, throw-away recipient
        keys.append(ClusterKey(1, keys[0].suite, keys[0].public_key))
    return Sealer(
        gateway_id=gateway,
        signing_key=dep.signing_key(gateway),
        clusters=keys,
        columns=(Column.VALUE, Column.SQUARE),
    )


def data(
    gateways: int, sensors: int, rate_hz: int, seconds: int, seed: int = 3
) -> list[StreamReadings]:
    """Random-walk sensor streams with occasional spikes."""
    rng = np.random.default_rng(seed)
    out = []
    n = rate_hz * seconds
    ts = T0 + np.arange(n, dtype=np.int64) * (SECOND // rate_hz)
    for g in range(gateways):
        for s in range(sensors):
            v = 50.0 + np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, 1.0, n)
            v[rng.integers(0, n, max(1, n // 1000))] += 15.0
            out.append(StreamReadings(f"gw{g}", f"s{s}", ts, np.round(v, 3)))
    return out


async def post_all(url: str, frames: list[bytes], concurrency: int) -> float:
    """POST frames with bounded concurrency; returns elapsed seconds."""
    sem = asyncio.Semaphore(concurrency)
    # the parties' HTTPS certificate is the enclave's own (gateways pin it by attestation)
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=False)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one(f: bytes) -> None:
            async with sem, s.post(url, data=f) as r:
                if r.status != 200:
                    raise RuntimeError(f"upload failed: {r.status} {await r.text()}")
                await r.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(f) for f in frames))
        return time.perf_counter() - t0


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
        sealer = sealer_for(dep, "gw0", (0,))
        ts = T0 + np.arange(1000, dtype=np.int64) * 1000
        vals = np.linspace(0.0, 100.0, 1000)
        frames = [
            sealer.seal(i, [SensorSegment("s0", ts + i * SECOND, vals)], created_ns=time.time_ns())[
                0
            ]
            for i in range(batches)
        ]
        asyncio.run(post_all(f"{dep.url('party0')}/v1/batches", frames[:20], 8))  # warm-up
        dt = asyncio.run(post_all(f"{dep.url('party0')}/v1/batches", frames[20:], 32))
        return (batches - 20) * 1000 / dt
    finally:
        dep.stop_all()


def metric(dep: Deployment, name: str, sample: str) -> float:
    """A Prometheus sample value from a service."""
    with urllib.request.urlopen(
        dep.url(name) + "/metrics", timeout=5, context=LOOPBACK_TLS
    ) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split(" ")[1])
    return 0.0


def upload_streams(dep: Deployment, streams: list[StreamReadings], per_batch_s: float) -> None:
    """Seal per-gateway batches (all sensors, ``per_batch_s`` of data) and upload them."""
    by_gw: dict[str, list[StreamReadings]] = {}
    for s in streams:
        by_gw.setdefault(s.gateway, []).append(s)
    frames: list[list[bytes]] = []
    for gw, ss in by_gw.items():
        sealer = sealer_for(dep, gw)
        end = int(ss[0].timestamps_ns[-1])
        step = int(per_batch_s * SECOND)
        for seq, start in enumerate(range(T0, end + 1, step)):
            segs = []
            for s in ss:
                m = (s.timestamps_ns >= start) & (s.timestamps_ns < start + step)
                segs.append(SensorSegment(s.sensor, s.timestamps_ns[m], s.values[m]))
            frames.append(sealer.seal(seq, segs, created_ns=time.time_ns()))
    for i in (0, 1):
        asyncio.run(post_all(f"{dep.url(f'party{i}')}/v1/batches", [f[i] for f in frames], 16))
    dep.declare(max(int(s.timestamps_ns[-1]) for s in streams) + 1)  # every window complete


def wait_epochs(dep: Deployment, n: int, timeout: float) -> list[dict[str, Any]]:
    """Wait for ``n`` epochs at the output service."""
    deadline = time.monotonic() + timeout
    epochs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        _, epochs = http_json(dep.url("output") + "/api/v1/epochs")
        if len(epochs) >= n:
            break
        time.sleep(0.2)
    return epochs


async def live_stream(
    dep: Deployment, seconds: float, gateways: int, sensors: int, hz: int
) -> None:
    """Send current-time readings every 100 ms from each gateway to both parties."""
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
                for i in (0, 1):
                    async with s.post(f"{dep.url(f'party{i}')}/v1/batches", data=frames[i]) as r:
                        await r.read()
            # as a gateway does: every reading before `tick` is delivered
            await asyncio.to_thread(dep.declare, tick)
            seq += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.time_ns() - tick) / 1e9))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON result is the last stdout line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, under 60 s")
    ap.add_argument("--keep", default="", help="directory to keep configs and logs in")
    args = ap.parse_args(argv)
    q = args.quick
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
        gws = {f"gw{g}": Ed25519PrivateKey.generate() for g in range(gateways)}
        dep = Deployment(root / "mpc", POLICY, gws, party_extra={"tick_s": 0.05})
        try:
            for name in ("party0", "party1", "output"):
                dep.start(name)
            for name in ("party0", "party1", "output"):
                dep.wait_healthy(name)
            log(f"uploading {total} readings")
            upload_streams(dep, streams, 0.5)
            dep.start("dealer")  # sessions (and computation) start once the dealer attests
            dep.wait_healthy("dealer")
            log("waiting for the secure analytics")
            wait_epochs(dep, secs, 120)
            busy = metric(dep, "party0", "tecc_party_epoch_seconds_sum")
            done = metric(dep, "party0", "tecc_party_epoch_readings_total")
            result["analytics_readings_per_s"] = round(done / busy) if busy else 0
            result["analytics_readings"] = int(done)
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
