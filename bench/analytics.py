"""Analytics program benchmark: CPU cost per reading of the secure epoch program.

``python -m bench.analytics [--quick]`` runs the analytics program of
:mod:`cloud_tecc.analytics.program` on two MPC parties and the dealer in this
process (in-memory transport, so the figure is the program's own work without
links or storage) over 40 streams × 2,500 readings per epoch, with the policy
of ``bench.cloud`` (window statistics, min/max, rate of change, rolling
z-score W = 600) and again with a flatline rule and a resolution floor on
every sensor, interleaved. Last stdout line, one JSON object:

* ``secure_cpu_us_per_reading`` — CPU µs per reading, both parties + dealer,
  median over the epochs after the first (which has no history);
* ``secure_flatline_cpu_us_per_reading`` — the same with the flatline detector;
* ``flatline_cost_ratio`` — the second over the first;
* ``plaintext_cpu_us_per_reading`` — the reference (same program, plaintext ops);
* ``secure_vs_plaintext`` — plaintext over secure cost.

The program's fixed cost per epoch (what splitting a party into K shard
workers adds, issue 15): the same 40 streams × :data:`SPLIT_PER_STREAM`
readings per epoch run once as one epoch of 40 streams and once as four
epochs of 10 (the four shards of ``bench.scale --quick`` at K = 4), in-memory
transport, both parties and the in-process dealer:

* ``split_cpu_ratio_k4`` — CPU of the four 10-stream epochs over the one
  40-stream epoch (1 if the program had no fixed cost per epoch);
* ``fixed_ms_per_epoch`` — the fixed part ``(4·c10 − c40) / 3``, CPU ms per
  epoch for both parties and the dealer together.

The flatline figures are ``null`` on a tree whose policy has no flatline
detector, so the same file also measures an older commit (A/B in one sitting:
``git archive <commit> | tar -x -C DIR`` and copy this file into ``DIR/bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import numpy as np

from cloud_tecc.analytics.plan import EpochInput, StreamInput, StreamState
from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.analytics.program import run_epoch
from cloud_tecc.analytics.reference import EpochResult, ReferenceAnalytics, StreamReadings
from cloud_tecc.analytics.release import build_release
from cloud_tecc.analytics.secure import MpcOps
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork
from tecc_contract.scale import Scale

BASE: dict[str, Any] = {
    "window_s": 1.0,
    "min_count": 10,
    "release": ["count", "mean", "std", "min", "max", "zscore_alerts", "rate_alerts"],
    "rates": [{"sensor": "s*", "max_delta": 20.0}],
    "zscore": {"window": 600, "k": 3.0, "min_baseline": 30},
}
FLATLINE: dict[str, Any] = BASE | {
    "release": [*BASE["release"], "flatline_alerts"],
    "flatline": [{"sensor": "s*", "span": 100, "min_std": 0.001}],
    "resolutions": [{"sensor": "s*", "step": 0.01}],
}
T0 = 1_700_000_000_000_000_000
#: Every sensor declares 0–100 and is shared scaled from it, as a gateway does.
SCALE = Scale.for_range(0.0, 100.0, 12)
PER_EPOCH = 2500
#: Readings per stream per epoch in the shard-split figure (bench.scale --quick's).
SPLIT_PER_STREAM = 1000


def log(msg: str) -> None:
    """Progress to stderr."""
    print(f"[bench.analytics] {msg}", file=sys.stderr, flush=True)


def data(epochs: int, seed: int = 1, per_epoch: int = PER_EPOCH) -> list[StreamReadings]:
    """4 gateways × 10 sensors, ``per_epoch`` readings per stream per 1-second epoch."""
    rng = np.random.default_rng(seed)
    n = per_epoch * epochs
    ts = T0 + np.arange(n, dtype=np.int64) * (1_000_000_000 // per_epoch)
    return [
        StreamReadings(f"gw{g}", f"s{s}", ts, 50 + rng.normal(0, 1, n), SCALE)
        for g in range(4)
        for s in range(10)
    ]


async def secure_cpu(policy: AnalyticsPolicy, results: list[EpochResult]) -> list[float]:
    """CPU seconds of every epoch on fresh shares of the reference's inputs."""
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    parties = [Party(i, 2, net.transport(i), dealer.source(i)) for i in range(2)]
    states: list[dict[tuple[str, str], StreamState]] = [{}, {}]
    rng = np.random.default_rng(7)
    cpu = []
    for r in results:
        eps: list[list[StreamInput]] = [[], []]
        for s in r.epoch.streams:
            if s.q is None:
                raise ValueError("the reference must encode squares")
            m = rng.integers(0, 2**63, len(s.x), dtype=np.uint64)
            mq = rng.integers(0, 2**63, len(s.x), dtype=np.uint64)
            for i, (x, q) in enumerate(((m, mq), (s.x - m, s.q - mq))):
                st = states[i].get((s.gateway, s.sensor))
                eps[i].append(StreamInput(s.gateway, s.sensor, s.timestamps_ns, x, q, st, s.scale))
        inputs = [EpochInput(r.epoch.start_ns, tuple(e)) for e in eps]
        t = time.process_time()
        outs = await asyncio.gather(
            *(run_epoch(MpcOps(parties[i]), policy, inputs[i]) for i in range(2))
        )
        for i in range(2):
            build_release(policy, inputs[i], outs[i], 16, 2)
        cpu.append(time.process_time() - t)
        for i in range(2):
            for s, state in zip(inputs[i].streams, outs[i].states, strict=True):
                states[i][(s.gateway, s.sensor)] = state
    return cpu


async def run(epochs: int, rounds: int) -> dict[str, Any]:
    """Interleave the two policies ``rounds`` times; medians of the steady epochs."""
    streams = data(epochs)
    readings = PER_EPOCH * 40
    costs: dict[str, list[float]] = {"base": [], "flatline": [], "plain": []}
    policies = {"base": policy_from_mapping(BASE)}
    try:
        policies["flatline"] = policy_from_mapping(FLATLINE)
    except Exception:  # an older tree's policy loader refuses the unknown key
        log("this tree has no flatline detector: measuring the base policy only")
    for k in range(rounds):
        for name, policy in policies.items():
            t = time.process_time()
            results = await ReferenceAnalytics(policy).run(streams)
            if name == "base":
                costs["plain"].append((time.process_time() - t) / epochs)
            log(f"round {k + 1}/{rounds}: {name}")
            costs[name].extend((await secure_cpu(policy, results))[1:])
    us = {k: float(np.median(v)) / readings * 1e6 for k, v in costs.items() if v}
    flat = us.get("flatline")
    return {
        "secure_cpu_us_per_reading": round(us["base"], 3),
        "secure_flatline_cpu_us_per_reading": round(flat, 3) if flat else None,
        "flatline_cost_ratio": round(flat / us["base"], 4) if flat else None,
        "plaintext_cpu_us_per_reading": round(us["plain"], 3),
        "secure_vs_plaintext": round(us["plain"] / us["base"], 4),
        "readings_per_epoch": readings,
        "epochs": epochs,
        "rounds": rounds,
    }


async def split(epochs: int, rounds: int) -> dict[str, Any]:
    """One 40-stream epoch against four 10-stream ones: the program's fixed cost per epoch."""
    streams = data(epochs, per_epoch=SPLIT_PER_STREAM)
    policy = policy_from_mapping(BASE)
    whole: list[float] = []
    parts: list[float] = []
    for k in range(rounds):  # interleaved, so load hits both alike
        results = await ReferenceAnalytics(policy).run(streams)
        whole.extend((await secure_cpu(policy, results))[1:])
        per_epoch = np.zeros(epochs - 1)
        for q in range(4):
            shard = await ReferenceAnalytics(policy).run(streams[10 * q : 10 * (q + 1)])
            per_epoch += (await secure_cpu(policy, shard))[1:]
        parts.extend(per_epoch.tolist())
        log(f"split round {k + 1}/{rounds}")
    c40, c4x10 = float(np.median(whole)), float(np.median(parts))
    return {
        "split_cpu_ratio_k4": round(c4x10 / c40, 4),
        "fixed_ms_per_epoch": round((c4x10 - c40) / 3 * 1e3, 2),
        "split_readings_per_epoch": 40 * SPLIT_PER_STREAM,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the JSON result is the last stdout line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, under 60 s")
    args = ap.parse_args(argv)
    epochs, rounds = (4, 2) if args.quick else (8, 4)
    result = {"quick": args.quick} | asyncio.run(run(epochs, rounds))
    result |= asyncio.run(split(epochs + 1, rounds + 1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
