"""The analytics secure program on N in-memory MPC parties, epoch by epoch.

The N-party counterpart of ``tests/cloud/secure_run.py``: every party gets a
fresh additive share (of N) of exactly what the plaintext reference encodes,
keeps its own shared stream states, and the released vectors are added and
decoded as the output service does. Returns the decoded releases and each
party's traffic counters, so tests can compare results and rounds across N.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.plan import EpochInput, StreamInput, StreamState
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.program import run_epoch
from cloud_tecc.analytics.reference import EpochResult, ReferenceAnalytics, StreamReadings
from cloud_tecc.analytics.release import Decoded, build_release, check_layout, decode
from cloud_tecc.analytics.secure import MpcOps
from cloud_tecc.mpc import reveal, seeded_random_bytes, share
from cloud_tecc.mpc.engine import Party, Traffic
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork, Transport


@dataclass(frozen=True, slots=True)
class SecureRun:
    """What an N-party run of the analytics produced."""

    results: list[EpochResult]
    decoded: list[Decoded]
    traffic: list[Traffic]


async def secure_run_n(
    n: int,
    policy: AnalyticsPolicy,
    streams: list[StreamReadings],
    *,
    seed: int = 9,
    wrap: Callable[[int, Transport], Transport] | None = None,
) -> SecureRun:
    """Reference results, the decoded secure release per epoch and the parties' traffic."""
    results = await ReferenceAnalytics(policy).run(streams)
    net = MemoryNetwork(n)
    dealer = LocalDealer(n, random_bytes=seeded_random_bytes(bytes([seed]) * 32))
    transports: list[Transport] = [net.transport(i) for i in range(n)]
    if wrap is not None:
        transports = [wrap(i, t) for i, t in enumerate(transports)]
    parties = [Party(i, n, transports[i], dealer.source(i)) for i in range(n)]
    states: list[dict[tuple[str, str], StreamState]] = [{} for _ in range(n)]
    draw = seeded_random_bytes(bytes([seed + 1]) * 32)
    decoded = []
    for r in results:
        eps: list[list[StreamInput]] = [[] for _ in range(n)]
        for s in r.epoch.streams:
            if s.q is None:
                raise ValueError("the reference must encode squares")
            xs, qs = share(s.x, n, random_bytes=draw), share(s.q, n, random_bytes=draw)
            for i in range(n):
                st = states[i].get((s.gateway, s.sensor))
                eps[i].append(StreamInput(s.gateway, s.sensor, s.timestamps_ns, xs[i], qs[i], st))
        inputs = [EpochInput(r.epoch.start_ns, tuple(e)) for e in eps]
        outs = await asyncio.gather(
            *(run_epoch(MpcOps(parties[i]), policy, inputs[i]) for i in range(n))
        )
        for i in range(n):
            for s, st in zip(inputs[i].streams, outs[i].states, strict=True):
                states[i][(s.gateway, s.sensor)] = st
        rels = [build_release(policy, inputs[i], outs[i], 16, n) for i in range(n)]
        if any(rel.layout != rels[0].layout for rel in rels):
            raise AssertionError("the parties built different layouts")
        check_layout(policy, as_layout(rels[0].layout))
        decoded.append(decode(as_layout(rels[0].layout), reveal([rel.vector for rel in rels])))
    return SecureRun(results, decoded, [p.traffic for p in parties])


def streams_fixture(n: int = 120, seed: int = 1) -> list[StreamReadings]:
    """Three gateways of a temperature sensor (a spike, a drop), a stuck sensor, a sparse one."""
    t0 = 1_700_000_000_000_000_000
    rng = np.random.default_rng(seed)
    out = []
    for g, gw in enumerate(("g1", "g2", "g3")):
        ts = t0 + np.arange(n, dtype=np.int64) * (30_000_000_000 // n)
        v = 50.0 + 10.0 * (g == 2) + rng.normal(0.0, 1.0, n)
        v[n // 2] = 90.0
        v[2 * n // 3] = 40.0
        out.append(StreamReadings(gw, "t1", ts, v))
    out.append(StreamReadings("g2", "t_stuck", out[0].timestamps_ns, np.full(n, 20.0)))
    out.append(StreamReadings("g1", "sparse", t0 + np.arange(3, dtype=np.int64), np.ones(3)))
    return out
