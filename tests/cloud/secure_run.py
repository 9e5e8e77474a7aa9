"""Run the analytics program on two MPC parties (in memory) epoch by epoch.

The parties get fresh additive shares of exactly what the plaintext reference
encodes, keep their own shared stream states, and the released vectors are
added and decoded as the output service does.
"""

from __future__ import annotations

import asyncio

import numpy as np

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.plan import EpochInput, StreamInput, StreamState
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.program import EpochOutput, run_epoch
from cloud_tecc.analytics.reference import EpochResult, ReferenceAnalytics, StreamReadings
from cloud_tecc.analytics.release import Decoded, build_release, check_layout, decode
from cloud_tecc.analytics.secure import MpcOps
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork


async def secure_results(
    policy: AnalyticsPolicy, streams: list[StreamReadings], seed: int = 9
) -> tuple[list[EpochResult], list[Decoded], list[EpochOutput]]:
    """Reference results, and per epoch the decoded secure release and party 0's output."""
    results = await ReferenceAnalytics(policy).run(streams)
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    parties = [Party(i, 2, net.transport(i), dealer.source(i)) for i in range(2)]
    states: list[dict[tuple[str, str], StreamState]] = [{}, {}]
    rng = np.random.default_rng(seed)
    decoded, outputs = [], []
    for r in results:
        eps = [[], []]  # type: list[list[StreamInput]]
        for s in r.epoch.streams:
            if s.q is None:
                raise ValueError("the reference must encode squares")
            m = rng.integers(0, 2**64 - 1, len(s.x), dtype=np.uint64, endpoint=True)
            mq = rng.integers(0, 2**64 - 1, len(s.x), dtype=np.uint64, endpoint=True)
            for i, (x, q) in enumerate(((m, mq), (s.x - m, s.q - mq))):
                st = states[i].get((s.gateway, s.sensor))
                eps[i].append(StreamInput(s.gateway, s.sensor, s.timestamps_ns, x, q, st, s.scale))
        inputs = [EpochInput(r.epoch.start_ns, tuple(e)) for e in eps]
        outs = await asyncio.gather(
            *(run_epoch(MpcOps(parties[i]), policy, inputs[i]) for i in range(2))
        )
        for i in range(2):
            for s, st in zip(inputs[i].streams, outs[i].states, strict=True):
                states[i][(s.gateway, s.sensor)] = st
        rels = [build_release(policy, inputs[i], outs[i], 16, 2) for i in range(2)]
        if rels[0].layout != rels[1].layout:
            raise AssertionError("the parties built different layouts")
        check_layout(policy, as_layout(rels[0].layout))
        decoded.append(decode(as_layout(rels[0].layout), rels[0].vector + rels[1].vector))
        outputs.append(outs[0])
    return results, decoded, outputs
