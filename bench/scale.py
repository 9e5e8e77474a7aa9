"""Scale benchmark: the same readings through K = 1, 2 and 4 shard workers per party.

``python -m bench.scale [--quick] [--keep DIR] [--tick-s S]`` prints progress to
stderr and, as the last line of stdout, one JSON object. ``--tick-s`` is the
workers' agreement tick (default 0.05 s as in bench.cloud; the product's
default is 0.2 s). Per K, a deployment of 2 parties
× K shard workers, K dealers (one per shard) and the output service, all as
processes (:class:`~demo.devstack.deployment.Deployment` with ``shards=K``),
every MPC session running before any data arrives. The bench plays the
gateways with today's direct ingest (:mod:`demo.devstack.shards`): each
batch is split by the shard map and each shard's part is sealed and sent to
that shard's worker of every party, with the windows still open. Then, as in
:mod:`bench.cloud_parties`, the CPU time of every cloud process is read from
``/proc``, the gateways declare every window complete (over one kept-alive
connection per worker, opened before the first reading, as a gateway's uplink
session: :class:`NoticeLinks`), and once the output service holds every epoch
of every shard the CPU time is read again. Process start-up (interpreter,
imports, attestation, MPC sessions) falls outside that window, so do the
upload and the idle reading:

* ``cpu_us_per_reading_kK`` — CPU µs of every process (workers, dealers,
  output) together per reading analysed (the shards' party-0 workers'
  ``tecc_party_epoch_readings_total``);
* ``readings_per_s_kK`` — readings analysed over the wall time from the
  declaration until the output holds every epoch;
* ``cpu_ratio_k2_k1``, ``cpu_ratio_k4_k1`` — against K = 1 in the same run
  (target ≤ 1.15);
* ``results_identical`` — every released window, flag and fleet row served
  by the output's ``/api/v1`` equal across K (arrival times, incident ids
  and shard numbers aside). The exit status is 1 when they differ.

The readings: random-walk streams with spikes (:func:`bench.cloud_data.data`),
bench.cloud's policy plus four fleet classes (``s0`` … ``s3`` of every
gateway) so that fleet rows are compared too; the shard map puts a fleet
class in one shard and spreads the other streams by (gateway, sensor), so
every shard holds streams.

``bench_cloud_analytics_readings_per_s`` is bench.cloud's analytics figure
(party 0's readings over its own epoch seconds,
``tecc_party_epoch_seconds_sum``) on the same readings and policy in the same
run. In the full run it comes from a separate deployment measured by
:func:`bench.cloud.measure_analytics` (``bench_cloud_source``:
``separate_run``); with ``--quick`` (to save a fourth deployment) from the
K = 1 deployment, which is bench.cloud's (2 parties, one dealer, the output,
``tick_s`` 0.05, no shard keys; ``k1_deployment``).
``k1_epoch_readings_per_s`` is that method applied to the K = 1 deployment,
``k1_vs_cloud`` the ratio of the two (target ≥ 1 up to the noise; exactly 1
with ``--quick``), and ``k1_wall_vs_cloud`` the ratio of
``readings_per_s_k1`` (wall time, which also counts agreement, ticks and
the output) to it.

Further per-K figures: ``cpu_us_per_reading_with_ingest`` (CPU from the end
of the idle reading through the end, so also ingest of K sealed parts per
batch and the dealers' batches generated ahead, which the dealer does
``depth`` batches in advance and so partly before the declaration),
``idle_cpu_per_s`` (cores the workers and the output use with the sessions
up and no data: ticks, heartbeats; the dealers are left out, as right after
the sessions start they generate their first batches), ``mpc_rounds`` (over all shards, party 0),
``idle_rounds`` (agreement rounds in which nothing was proposed, all workers of every party
together, in the measured window), ``dealer_batches`` (batches all dealers generated in
the window: what the parties took, as each dealer keeps ``depth`` batches ahead; a batch
holds the correlations of ``batch_readings`` readings, so about readings / 20,000 when
the epochs use batches evenly).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.cloud import analytics_deployment, measure_analytics
from bench.cloud_data import (
    POLICY,
    SECOND,
    T0,
    cloud_args,
    data,
    gateway_batches,
    metric,
    sealer_for,
    wait_epochs,
)
from bench.cloud_parties import cpu_all, sessions_running
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import StreamReadings
from demo.devstack.deployment import LOOPBACK_TLS, Deployment, http_json
from demo.devstack.shards import ShardOf, send_sharded, shard_map
from tecc_contract.envelope import Sealer, SensorSegment
from tecc_contract.progress import Progress, seal_progress

KS = (1, 2, 4)
SCALE_POLICY: dict[str, Any] = {
    **POLICY,
    "release": [*POLICY["release"], "fleet"],
    # one class in each shard at K = 4, two in each at K = 2 (hash(class) mod K)
    "fleet": {
        "classes": {"fleet-a": ["s0"], "fleet-b": ["s1"], "fleet-c": ["s2"], "fleet-e": ["s3"]},
        "k": 3.0,
    },
}
#: Keys of an output row that depend on arrival or on the layout, not on the result.
VOLATILE = frozenset({"stored_ns", "incident", "shard"})
RESULTS = ("windows", "alerts", "fleet")
PAGE = 10_000  # the output API's largest page (cloud_tecc/output/api.py MAX_LIMIT)
TICK_S = 0.05  # the parties' agreement tick, as in bench.cloud (the product default is 0.2)
#: Batches the dealers generated (each keeps ``depth`` ahead of what its parties took).
DEALER_BATCHES = "tecc_dealer_batches"
IDLE_S = 2.0  # CPU of the idle deployment (sessions up, no data) is read over this long
#: Agreement rounds in which the leader proposed nothing (cloud_tecc/party/pacing.py).
IDLE_ROUNDS = 'tecc_party_agreement_rounds_total{outcome="idle"}'
_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress to stderr, with the seconds since the start."""
    print(f"[bench.scale] {time.monotonic() - _T0:6.1f} s  {msg}", file=sys.stderr, flush=True)


def sizes(quick: bool) -> tuple[int, int, int, int]:
    """(gateways, sensors per gateway, Hz, seconds): 200,000 readings quick, 1,000,000 full."""
    return (4, 10, 1000, 5) if quick else (8, 10, 1250, 10)


def upload_sharded(
    dep: Deployment, streams: list[StreamReadings], per_batch_s: float, shard_of: ShardOf
) -> int:
    """Every gateway's batches (all its sensors, ``per_batch_s`` of data each) through the
    shard map to every party's workers, windows left open; the number of POSTs."""
    sealers = {gw: sealer_for(dep, gw) for gw in dict.fromkeys(s.gateway for s in streams)}
    jobs = [(sealers[gw], gw, seq, segs) for gw, seq, segs in gateway_batches(streams, per_batch_s)]

    def one(job: tuple[Sealer, str, int, list[SensorSegment]]) -> int:
        sealer, gw, seq, segs = job
        answers = send_sharded(dep, sealer, gw, seq, segs, shard_of=shard_of)
        for status, body in answers:
            if status != 200:
                raise RuntimeError(f"upload of {gw} seq {seq} failed: {status} {body}")
        return len(answers)

    with ThreadPoolExecutor(8) as pool:  # as many gateways uploading at once
        return sum(pool.map(one, jobs))


class NoticeLinks:
    """One kept-alive HTTPS connection per worker, opened before the measurement, for the
    gateways' progress notices: a gateway's uplink is one long-lived session per endpoint
    (``gateway/uplink.py``), so the declaration costs the workers no TLS handshake per
    notice (:meth:`Deployment.declare` opens a connection per notice)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.conns: dict[str, http.client.HTTPConnection] = {}
        for w in dep.workers:
            url = urllib.parse.urlsplit(dep.url(w))
            host, port = url.hostname or "127.0.0.1", url.port
            if url.scheme == "https":
                self.conns[w] = http.client.HTTPSConnection(
                    host, port, timeout=30, context=LOOPBACK_TLS
                )
            else:
                self.conns[w] = http.client.HTTPConnection(host, port, timeout=30)
            self._ask(w, "GET", "/healthz", None)  # the session is up, as a gateway's would be

    def _ask(self, worker: str, method: str, path: str, body: bytes | None) -> None:
        conn = self.conns[worker]
        conn.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {worker}{path}: {resp.status} {answer[:200]!r}")

    def declare(self, through_ns: int) -> None:
        """Every gateway's signed notice to every worker (the workers in parallel)."""
        now = time.time_ns()
        gws = [g for g, k in self.dep.gateways.items() if isinstance(k, Ed25519PrivateKey)]

        def one(worker: str) -> None:
            for g in gws:
                notice = Progress(g, self.dep.domain(worker), min(through_ns, now), now)
                frame = seal_progress(notice, self.dep.signing_key(g))
                self._ask(worker, "POST", "/v1/progress", frame)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, self.conns))

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def fetch_results(base_url: str) -> dict[str, list[dict[str, Any]]]:
    """The output's released windows, flags (``alerts``) and fleet rows, every page."""
    out: dict[str, list[dict[str, Any]]] = {}
    for what in RESULTS:
        rows: list[dict[str, Any]] = []
        while True:
            url = f"{base_url}/api/v1/{what}?limit={PAGE}"
            if what == "alerts":
                url += f"&offset={len(rows)}"
            status, page = http_json(url)
            if status != 200:
                raise RuntimeError(f"GET /api/v1/{what}: {status} {page}")
            rows += page
            if len(page) < PAGE:
                break
            if what != "alerts":
                raise RuntimeError(f"/api/v1/{what} holds more than {PAGE} rows: use fewer")
        out[what] = rows
    return out


def normalise(rows: list[dict[str, Any]]) -> Counter[str]:
    """Rows as a multiset of canonical JSON strings, without the :data:`VOLATILE` keys."""
    return Counter(
        json.dumps({k: v for k, v in r.items() if k not in VOLATILE}, sort_keys=True) for r in rows
    )


def differences(
    base: dict[str, list[dict[str, Any]]], other: dict[str, list[dict[str, Any]]]
) -> dict[str, int]:
    """Per kind of result, how many rows one side holds and the other does not."""
    out = {}
    for what in RESULTS:
        a, b = normalise(base.get(what, [])), normalise(other.get(what, []))
        out[what] = sum(((a - b) + (b - a)).values())
    return out


def bench_k(
    root: Path, k: int, streams: list[StreamReadings], secs: int, tick_s: float = TICK_S
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """One deployment of K shard workers per party over ``streams``; its figures and results."""
    shard_of = shard_map(policy_from_mapping(SCALE_POLICY), k)
    used = {shard_of(s.gateway, s.sensor) for s in streams}
    if used != set(range(k)):
        raise RuntimeError(f"K = {k}: streams reach shards {sorted(used)} only; add streams")
    gws = {g: Ed25519PrivateKey.generate() for g in sorted({s.gateway for s in streams})}
    dep = Deployment(root, SCALE_POLICY, gws, party_extra={"tick_s": tick_s}, shards=k)
    try:
        dep.start_all()
        sessions_running(dep)
        idle0 = cpu_all(dep)
        time.sleep(IDLE_S)
        idle = cpu_all(dep)
        total = sum(len(s.values) for s in streams)
        log(f"K = {k}: uploading {total} readings to {len(dep.workers)} workers")
        posts = upload_sharded(dep, streams, 0.5, shard_of)
        links = NoticeLinks(dep)
        idle_rounds0 = sum(metric(dep, w, IDLE_ROUNDS) for w in dep.workers)
        batches0 = sum(metric(dep, d, DEALER_BATCHES) for d in dep.dealers)
        before = cpu_all(dep)
        t0 = time.perf_counter()
        links.declare(T0 + secs * SECOND)  # the end of the last window: every epoch closes
        links.close()
        epochs = wait_epochs(dep, secs * k, 600)
        wall = time.perf_counter() - t0
        after = cpu_all(dep)
        idle_rounds = sum(metric(dep, w, IDLE_ROUNDS) for w in dep.workers) - idle_rounds0
        batches = sum(metric(dep, d, DEALER_BATCHES) for d in dep.dealers) - batches0
        if len(epochs) < secs * k:
            raise RuntimeError(f"K = {k}: only {len(epochs)} of {secs * k} epochs reached output")
        shard0 = [dep.worker(0, s) for s in range(k)]
        readings = sum(metric(dep, w, "tecc_party_epoch_readings_total") for w in shard0)
        rounds = sum(metric(dep, w, "tecc_party_mpc_rounds_total") for w in shard0)
        busy = metric(dep, "party0", "tecc_party_epoch_seconds_sum")
        shard0_readings = metric(dep, "party0", "tecc_party_epoch_readings_total")
        results = fetch_results(dep.url("output"))
    finally:
        dep.stop_all()
    cpu = {name: after[name] - before[name] for name in after}
    fig: dict[str, Any] = {
        "readings": int(readings),
        "posts": posts,
        "wall_s": round(wall, 2),
        "cpu_s": {name: round(v, 3) for name, v in cpu.items()},
        "cpu_us_per_reading": round(1e6 * sum(cpu.values()) / readings, 3),
        "cpu_us_per_reading_with_ingest": round(
            1e6 * sum(after[n] - idle[n] for n in after) / readings, 3
        ),
        "idle_cpu_per_s": round(
            sum(idle[n] - idle0[n] for n in idle if n not in dep.dealers) / IDLE_S, 3
        ),
        "mpc_rounds": int(rounds),
        "idle_rounds": int(idle_rounds),
        "dealer_batches": int(batches),
        "readings_per_s": round(readings / wall),
        "epoch_readings_per_s": round(shard0_readings / busy) if busy else 0,
        "rows": {what: len(rows) for what, rows in results.items()},
    }
    return fig, results


def summarise(figs: dict[int, dict[str, Any]], diffs: dict[int, dict[str, int]]) -> dict[str, Any]:
    """The flat result: per-K figures (suffix ``_kK``), ratios to K = 1, ``results_identical``."""
    out: dict[str, Any] = {}
    for k, fig in sorted(figs.items()):
        for key, v in fig.items():
            out[f"{key}_k{k}"] = v
    for k in sorted(figs):
        if k != 1:
            out[f"cpu_ratio_k{k}_k1"] = round(
                figs[k]["cpu_us_per_reading"] / figs[1]["cpu_us_per_reading"], 3
            )
            out[f"readings_per_s_ratio_k{k}_k1"] = round(
                figs[k]["readings_per_s"] / figs[1]["readings_per_s"], 3
            )
            out[f"differences_k{k}_k1"] = diffs[k]
    out["results_identical"] = all(not any(d.values()) for d in diffs.values()) and all(
        sum(f["rows"].values()) > 0 for f in figs.values()
    )
    return out


def run(*, quick: bool, keep: str = "", tick_s: float = TICK_S) -> dict[str, Any]:
    """bench.cloud's analytics measurement (full run only), then every K, in one run."""
    gateways, sensors, hz, secs = sizes(quick)
    streams = data(gateways, sensors, hz, secs)
    figs: dict[int, dict[str, Any]] = {}
    res: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        cloud, source = 0, "k1_deployment"
        if not quick:  # first, so that the K = 1 run after it sees no warmer machine
            log("bench.cloud's analytics measurement on the same readings")
            (root / "cloud").mkdir(parents=True, exist_ok=True)
            dep = analytics_deployment(root / "cloud", gateways, SCALE_POLICY)
            try:
                cloud, _ = measure_analytics(dep, streams, secs)
            finally:
                dep.stop_all()
            source = "separate_run"
        for k in KS:
            (root / f"k{k}").mkdir(parents=True, exist_ok=True)
            figs[k], res[k] = bench_k(root / f"k{k}", k, streams, secs, tick_s)
            log(f"K = {k}: {json.dumps(figs[k])}")
        if quick:  # the K = 1 deployment is bench.cloud's (2 parties, 1 dealer, output)
            cloud = figs[1]["epoch_readings_per_s"]
    diffs = {k: differences(res[1], res[k]) for k in KS if k != 1}
    result: dict[str, Any] = {"quick": quick, "shards": list(KS), "tick_s": tick_s}
    result.update(summarise(figs, diffs))
    result["bench_cloud_analytics_readings_per_s"] = cloud
    result["bench_cloud_source"] = source
    result["k1_epoch_readings_per_s"] = figs[1]["epoch_readings_per_s"]
    result["k1_vs_cloud"] = round(figs[1]["epoch_readings_per_s"] / cloud, 3) if cloud else None
    result["k1_wall_vs_cloud"] = round(figs[1]["readings_per_s"] / cloud, 3) if cloud else None
    result["load_average"] = round(os.getloadavg()[0], 2)
    log(f"load average {result['load_average']}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON result is the last stdout line; 1 if results differ."""
    ap = cloud_args(__doc__)
    ap.add_argument(
        "--tick-s",
        type=float,
        default=TICK_S,
        help=f"the workers' agreement tick (default {TICK_S}, as bench.cloud)",
    )
    args = ap.parse_args(argv)
    if args.tick_s <= 0:
        raise SystemExit("--tick-s: write a positive number of seconds, e.g. 0.2")
    result = run(quick=args.quick, keep=args.keep, tick_s=args.tick_s)
    print(json.dumps(result))
    if not result["results_identical"]:
        log(
            "results differ across K: "
            + json.dumps({k: result.get(f"differences_k{k}_k1") for k in KS[1:]})
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
