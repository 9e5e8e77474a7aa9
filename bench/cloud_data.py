"""Shared parts of the cloud benchmarks: the policy, the readings, sealing and uploading.

Used by :mod:`bench.cloud` (ingest, analytics, latency) and
:mod:`bench.cloud_parties` (N = 2, 3, 4).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np

from cloud_tecc.analytics.reference import StreamReadings
from demo.devstack.deployment import LOOPBACK_TLS, Deployment, http_json
from tecc_contract.attestation import Quote
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite
from tecc_contract.scale import Scale

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
#: Every sensor declares 0–150 and is shared scaled from it, as a gateway does.
SCALE = Scale.for_range(0.0, 150.0, 12)
MAX_SENSORS = 1000


def cloud_args(description: str | None) -> argparse.ArgumentParser:
    """The flags of every cloud benchmark: ``--quick`` and ``--keep DIR``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="small sizes, under 60 s")
    ap.add_argument("--keep", default="", help="directory to keep configs and logs in")
    return ap


def log(msg: str) -> None:
    """Progress to stderr."""
    print(f"[bench.cloud] {msg}", file=sys.stderr, flush=True)


def sealer_for(dep: Deployment, gateway: str, parties: tuple[int, ...] | None = None) -> Sealer:
    """A sealer for the parties' quoted HPKE keys (quotes parsed, trust assumed; default all)."""
    keys = []
    for i in range(dep.n_parties) if parties is None else parties:
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
        scales={f"s{i}": SCALE for i in range(MAX_SENSORS)},
    )


def ingest_frames(dep: Deployment, batches: int) -> list[bytes]:
    """``batches`` envelopes of 1000 readings of gateway ``gw0`` for party 0 (x² column)."""
    sealer = sealer_for(dep, "gw0", (0,))
    ts = T0 + np.arange(1000, dtype=np.int64) * 1000
    vals = np.linspace(0.0, 100.0, 1000)
    return [
        sealer.seal(i, [SensorSegment("s0", ts + i * SECOND, vals)], created_ns=time.time_ns())[0]
        for i in range(batches)
    ]


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
            out.append(StreamReadings(f"gw{g}", f"s{s}", ts, np.round(v, 3), SCALE))
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


def metric(dep: Deployment, name: str, sample: str) -> float:
    """A Prometheus sample value from a service."""
    with urllib.request.urlopen(
        dep.url(name) + "/metrics", timeout=5, context=LOOPBACK_TLS
    ) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split(" ")[1])
    return 0.0


def gateway_batches(
    streams: list[StreamReadings], per_batch_s: float
) -> Iterator[tuple[str, int, list[SensorSegment]]]:
    """``(gateway, seq, segments)`` per batch: all of a gateway's sensors, ``per_batch_s`` of
    data each, from T0 on."""
    by_gw: dict[str, list[StreamReadings]] = {}
    for s in streams:
        by_gw.setdefault(s.gateway, []).append(s)
    step = int(per_batch_s * SECOND)
    for gw, ss in by_gw.items():
        end = int(ss[0].timestamps_ns[-1])
        for seq, start in enumerate(range(T0, end + 1, step)):
            segs = []
            for s in ss:
                m = (s.timestamps_ns >= start) & (s.timestamps_ns < start + step)
                segs.append(SensorSegment(s.sensor, s.timestamps_ns[m], s.values[m]))
            yield gw, seq, segs


def upload_streams(
    dep: Deployment, streams: list[StreamReadings], per_batch_s: float, *, declare: bool = True
) -> None:
    """Seal per-gateway batches (all sensors, ``per_batch_s`` of data) and upload them.

    With ``declare`` every gateway then says all windows are complete (else the
    epochs stay open until the caller declares).
    """
    sealers = {gw: sealer_for(dep, gw) for gw in dict.fromkeys(s.gateway for s in streams)}
    frames = [
        sealers[gw].seal(seq, segs, created_ns=time.time_ns())
        for gw, seq, segs in gateway_batches(streams, per_batch_s)
    ]
    for i in range(dep.n_parties):
        asyncio.run(post_all(f"{dep.url(f'party{i}')}/v1/batches", [f[i] for f in frames], 16))
    if declare:
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
