"""Detection scoring on long accelerated scenarios: incidents against ground truth.

``python -m bench.detect [--quick] [--seed N] [--hours H]`` simulates the demo
line (configs/demo/sim.yaml) for 10 simulated minutes (``--quick``) or 2
simulated hours, with normal operation that includes a cold start (warm-up),
random load changes, shift changes, one maintenance stop per machine and a
(compressed) daily cycle, and anomalies of every kind at random times
(:mod:`bench.detect_scenario`; ground truth from the simulator).

How it is accelerated, and what is real. The simulator's offline generator
(:func:`firmware_sim.line.simulate`, byte-identical to what a live run
publishes) produces the readings; the gateway's validation
(:func:`tecc_contract.fixedpoint.validate` against the declared range; failed
and garbage readings are rejected and counted, as the gateway does) and
fixed-point encoding (value + x² columns) prepare them; each window
(the demo policy's ``window_s``) is then computed by the secure analytics
program on fresh additive shares by **two MPC parties with the real engine
and dealer** (:class:`cloud_tecc.mpc.engine.Party`, in-memory transport, as
``bench.analytics``), and, on the same inputs, by the plaintext reference.
The parties' release shares go through the output service's own
reconstruction (:func:`cloud_tecc.output.collector.try_complete`) and into a
real :class:`cloud_tecc.output.store.ResultStore` with the incident tracker
(:mod:`cloud_tecc.output.tracking`) and the output service's default
incident rules (``cloud_tecc.config.IncidentsDoc``). What is *not* exercised:
MQTT/OPC-UA transport, HPKE envelopes, spools, HTTP and the processes — the
other benchmarks measure those; here they would make a 2-hour scenario take
hours, and they do not change a single flag (bench.e2e checks that).

Scored by event (:mod:`bench.detect_score`): ``recall`` over detectable
anomalies (:func:`bench.detect_scenario.detectable`), ``precision``,
``false_incidents_per_line_hour``, ``ttd_s_p50``, plus ``incidents``,
``anomalies``, ``alert_rows`` (flagged readings) and
``mpc_vs_plaintext_mismatches``: per window, every released flag (limit,
rate, z-score, flatline, fleet deviation) of the secure run against the
reference on the same readings — any difference counts, except where the
reference's own comparison margin lies inside the documented error band of
that rule (the MPC truncation may be one LSB high; docs/MPC.md §9): those
are reported as ``mpc_vs_plaintext_within_band``. Limit and rate flags are
exact, so any difference there is a mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.detect_scenario import ROOT, detectable, line_config
from bench.detect_score import Found, Truth, score
from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.ops import PlainOps
from cloud_tecc.analytics.plan import EpochInput, StreamInput, StreamState
from cloud_tecc.analytics.policy import AnalyticsPolicy, load_policy
from cloud_tecc.analytics.program import EpochOutput, run_epoch
from cloud_tecc.analytics.release import Decoded, build_release
from cloud_tecc.analytics.secure import MpcOps
from cloud_tecc.config import DebounceDoc, IncidentsDoc
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork
from cloud_tecc.output.collector import try_complete
from cloud_tecc.output.incident_rows import IncidentQuery
from cloud_tecc.output.incidents import Debounce, Rules
from cloud_tecc.output.store import ResultStore
from cloud_tecc.output.tracking import track
from demo.layout import sensor_scales
from firmware_sim.line import simulate
from firmware_sim.sample import Status
from tecc_contract.envelope import derive_columns
from tecc_contract.fixedpoint import FixedPoint, SensorRange, validate
from tecc_contract.header import Column
from tecc_contract.ring import to_bytes
from tecc_contract.scale import Scale

POLICY = ROOT / "configs" / "demo" / "policy.yaml"
GATEWAY = "gw1"
START = 1_764_230_400.0  # simulated start (00:00 UTC); the day is compressed anyway


def log(msg: str) -> None:
    """Progress to stderr."""
    print(f"[bench.detect] {msg}", file=sys.stderr, flush=True)


def _debounce(d: DebounceDoc) -> Debounce:
    return Debounce(d.open_after, d.within_s, d.quiet_s, d.of_readings)


def _alert_set(rows: Decoded) -> set[tuple[Any, ...]]:
    out = {(a["gateway"], a["sensor"], int(a["ts_ns"]), a["detector"]) for a in rows.alerts}
    out |= {
        (w["gateway"], w["sensor"], int(w["start_ns"]), "fleet")
        for w in rows.windows
        if w.get("deviates_from_fleet")
    }
    return out


def _within_band(item: tuple[Any, ...], epoch: EpochInput, out: EpochOutput) -> bool:
    """Whether a flag that differs lies inside the documented band of its rule.

    Limit and rate flags are exact (never); the z-score, flatline and fleet
    flags may differ where the reference's margin is within the band the
    program bounds per reading (``margins[<detector>_band]``, docs/MPC.md §9).
    """
    _, sensor, ts, det = item
    if det not in ("zscore", "flatline", "fleet"):
        return False
    names = [s.sensor for s in epoch.streams]
    i = names.index(sensor)
    if det == "fleet":
        k = int(np.flatnonzero(np.flatnonzero(out.plan.fleet_class >= 0) == i)[0])
    else:
        offset = int(out.plan.count[:i].sum())
        k = offset + int(np.searchsorted(epoch.streams[i].timestamps_ns, ts))
    margin = int(out.margins[det].view(np.int64)[k])
    return abs(margin) <= int(out.margins[f"{det}_band"][k])


class Pipeline:
    """Secure + reference analytics epoch by epoch, into the output's store and tracker."""

    def __init__(
        self, policy: AnalyticsPolicy, store: ResultStore, seed: int, scales: dict[str, Scale]
    ) -> None:
        self.policy, self.store, self.scales = policy, store, scales
        self.codec = FixedPoint()
        self.ref_states: dict[str, StreamState] = {}
        net, dealer = MemoryNetwork(2), LocalDealer(2)
        self.parties = [Party(i, 2, net.transport(i), dealer.source(i)) for i in range(2)]
        self.states: list[dict[tuple[str, str], StreamState]] = [{}, {}]
        self.rng = np.random.default_rng([seed, 3])
        d = IncidentsDoc()  # the output service's default incident rules
        self.rules = Rules(
            _debounce(d.default), {name: _debounce(r) for name, r in d.detectors.items()}
        )
        self.mismatches, self.within_band, self.alert_rows, self.epochs = 0, 0, 0, 0
        self.examples: list[tuple[Any, ...]] = []

    async def epoch(self, start_ns: int, rows: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """One window: reference, two parties on fresh shares, reconstruction, incidents."""
        cols = (Column.VALUE, Column.SQUARE)
        streams = []
        for sensor, ts, v in rows:
            sc = self.scales[sensor]  # as the demo's gateways share it
            x, q = derive_columns(v, cols, self.codec, scaled=sc.scaled(v))
            st = self.ref_states.get(sensor)
            streams.append(StreamInput(GATEWAY, sensor, ts, x, q, st, sc))
        ref_in = EpochInput(start_ns, tuple(streams))
        ref_out = await run_epoch(PlainOps(), self.policy, ref_in)
        for s, new in zip(ref_in.streams, ref_out.states, strict=True):
            self.ref_states[s.sensor] = new
        ref_rel = build_release(self.policy, ref_in, ref_out, 16)
        eps: list[list[StreamInput]] = [[], []]
        for s in ref_in.streams:
            assert s.q is not None
            m = self.rng.integers(0, 2**64 - 1, len(s.x), dtype=np.uint64, endpoint=True)
            mq = self.rng.integers(0, 2**64 - 1, len(s.x), dtype=np.uint64, endpoint=True)
            for i, (x, q) in enumerate(((m, mq), (s.x - m, s.q - mq))):
                own = self.states[i].get((s.gateway, s.sensor))
                eps[i].append(StreamInput(s.gateway, s.sensor, s.timestamps_ns, x, q, own, s.scale))
        inputs = [EpochInput(start_ns, tuple(e)) for e in eps]
        outs = await asyncio.gather(
            *(run_epoch(MpcOps(self.parties[i]), self.policy, inputs[i]) for i in range(2))
        )
        for i in range(2):
            for s, new in zip(inputs[i].streams, outs[i].states, strict=True):
                self.states[i][(s.gateway, s.sensor)] = new
        rels = [build_release(self.policy, inputs[i], outs[i], 16, 2) for i in range(2)]
        done = try_complete(
            self.policy,
            2,
            {i: (as_layout(rels[i].layout), to_bytes(rels[i].vector)) for i in range(2)},
        )
        if done is None:
            raise RuntimeError("the output could not reconstruct an epoch")
        ref_done = try_complete(
            self.policy, 1, {0: (as_layout(ref_rel.layout), to_bytes(ref_rel.vector))}
        )
        assert ref_done is not None
        for item in sorted(_alert_set(done.rows) ^ _alert_set(ref_done.rows)):
            if _within_band(item, ref_in, ref_out):
                self.within_band += 1
            else:
                self.mismatches += 1
                if len(self.examples) < 5:
                    self.examples.append(item)
        self.alert_rows += len(done.rows.alerts)
        through = done.epoch_ns + done.window_ns
        rules = self.rules
        self.store.store_epoch(
            done.epoch_ns,
            done.window_ns,
            done.rows,
            through,
            lambda live: track(done.rows, through, live, rules, max_flags=1000),
        )
        self.epochs += 1


def readings(
    cfg: Any, duration_s: float
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], Any, int]:
    """Simulated readings after the gateway's validation; ground truth; rejected count."""
    run = simulate(cfg, start=START, duration_s=duration_s)
    out, rejected = {}, 0
    for spec in cfg.sensors():
        samples = [s for s in run.samples[spec.sensor_id] if s.status is Status.GOOD]
        rejected += len(run.samples[spec.sensor_id]) - len(samples)
        ts = np.array([round(s.ts * 1e9) for s in samples], dtype=np.int64)
        v = np.array([s.value for s in samples], dtype=np.float64)
        ok = validate(v, SensorRange(spec.low, spec.high)).accepted
        rejected += int((~ok).sum())
        out[spec.sensor_id] = (ts[ok], v[ok])
    return out, run.records, rejected


async def run(seed: int, duration_s: float, policy: AnalyticsPolicy) -> dict[str, Any]:
    """Simulate, compute every window securely and in plaintext, track incidents, score."""
    t0 = time.perf_counter()
    cfg = line_config(seed, duration_s, START)
    data, records, rejected = readings(cfg, duration_s)
    log(
        f"simulated {duration_s:g} s: {sum(len(v[0]) for v in data.values())} readings, "
        f"{len(records)} anomalies ({time.perf_counter() - t0:.1f} s)"
    )
    wn = policy.window_ns
    by_epoch: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for sensor, (ts, v) in sorted(data.items()):
        ep = (ts // wn) * wn
        for e in np.unique(ep):
            m = ep == e
            by_epoch.setdefault(int(e), []).append((sensor, ts[m], v[m]))
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "results.db")
        ranges = {spec.sensor_id: (spec.low, spec.high) for spec in cfg.sensors()}
        pipe = Pipeline(policy, store, seed, sensor_scales(policy, ranges))
        for k, start in enumerate(sorted(by_epoch)):
            await pipe.epoch(start, by_epoch[start])
            if k % 600 == 599:
                log(f"{k + 1}/{len(by_epoch)} windows ({time.perf_counter() - t0:.1f} s)")
        rows = store.incidents(IncidentQuery(limit=100_000))
        store.close()
    found = [
        Found(r["sensor"], r["detector"], r["start_ns"] / 1e9, r["end_ns"] / 1e9) for r in rows
    ]
    truths = []
    for rec in records:
        ts, v = data.get(rec.sensor, (np.zeros(0, np.int64), np.zeros(0)))
        inside = (ts >= round(rec.start * 1e9)) & (ts <= round(rec.end * 1e9))
        prior = np.flatnonzero(ts < round(rec.start * 1e9))
        before = float(v[prior[-1]]) if prior.size else None
        ok, _ = detectable(rec, cfg, policy, v[inside], before)
        truths.append(Truth(rec.sensor, rec.kind, rec.start, rec.end, ok))
    grace = policy.zscore.window / min(s.rate_hz for s in cfg.sensors())
    result = score(truths, found, hours=duration_s / 3600, grace_s=grace)
    return {
        "seed": seed,
        "simulated_hours": round(duration_s / 3600, 4),
        **result,
        "alert_rows": pipe.alert_rows,
        "mpc_vs_plaintext_mismatches": pipe.mismatches,
        "mpc_vs_plaintext_within_band": pipe.within_band,
        "mismatch_examples": [list(x) for x in pipe.examples],
        "windows": pipe.epochs,
        "rejected_at_gateway": rejected,
        "grace_s": grace,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON result is the last stdout line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 simulated minutes (< 60 s wall)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=None, help="simulated hours (default 2)")
    ap.add_argument("--policy", type=Path, default=POLICY)
    args = ap.parse_args(argv)
    hours = args.hours if args.hours is not None else (1 / 6 if args.quick else 2.0)
    result = asyncio.run(run(args.seed, hours * 3600, load_policy(args.policy)))
    print(json.dumps({"quick": args.quick} | result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
