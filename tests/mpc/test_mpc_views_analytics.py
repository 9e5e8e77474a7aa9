"""N − 1 parties running the analytics secure program cannot tell two sets of readings apart.

The whole secure program of one epoch (window statistics, limits, rate,
z-score, flatline, fleet, the release vector) runs ``RUNS`` times on readings
A and ``RUNS`` times on readings B — same gateways, sensors, timestamps and
counts (public metadata), different values — each run with its own fixed
seeds. A coalition's view (input shares of the value and square columns,
dealer frames, every received message, every opened value, its release
vector shares, and the sums of its input shares) is compared byte by byte
with a Bonferroni-corrected two-sample χ² test (:mod:`tests.mpc.twosample`).
All N parties together do tell A from B: the test can fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from typing import Any

import numpy as np
import pytest

from cloud_tecc.analytics.plan import EpochInput, StreamInput
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.program import run_epoch
from cloud_tecc.analytics.reference import ReferenceAnalytics, StreamReadings
from cloud_tecc.analytics.release import build_release
from cloud_tecc.analytics.secure import MpcOps
from cloud_tecc.mpc import reveal, seeded_random_bytes, share
from cloud_tecc.mpc.transport import MemoryNetwork
from tests.mpc.twosample import compare
from tests.mpc.views import PartyView, Recorder, RecordingDealer, ViewParty, coalition_view

T0 = 1_700_000_000_000_000_000
READINGS = 24
RUNS = 100
POLICY = policy_from_mapping(
    {
        "window_s": 10,
        "min_count": 5,
        "limits": [{"sensor": "t*", "low": 0.0, "high": 80.0}],
        "rates": [{"sensor": "*", "max_delta": 5.0}],
        "zscore": {"window": 8, "k": 3.0, "min_baseline": 4, "min_sigma": 0.01},
        "flatline": [{"sensor": "t*", "span": 6, "min_std": 0.2}],
        "fleet": {"classes": {"temp": ["t*"]}, "k": 1.2},
    }
)


def _epoch(values: list[Any]) -> EpochInput:
    """The reference's encoding (values and squares) of one epoch of two gateways."""
    ts = T0 + np.arange(READINGS, dtype=np.int64) * 400_000_000
    streams = [StreamReadings(f"g{i}", "t1", ts, np.asarray(v)) for i, v in enumerate(values)]
    (result,) = asyncio.run(ReferenceAnalytics(POLICY).run(streams))
    return result.epoch


#: A: both gateways stuck at 20.0 (flatline). B: noise, a spike over the limit, a jump.
EPOCH_A = _epoch([np.full(READINGS, 20.0), np.full(READINGS, 20.0)])
_rng = np.random.default_rng(8)
_b0 = 50.0 + _rng.normal(0.0, 1.0, READINGS)
_b0[12] = 95.0
EPOCH_B = _epoch([_b0, 70.0 + np.arange(READINGS) * 0.25])


async def _run_once(n: int, epoch: EpochInput, seed: bytes) -> list[PartyView]:
    draw = seeded_random_bytes(hashlib.sha256(b"inputs" + seed).digest())
    per_party: list[list[StreamInput]] = [[] for _ in range(n)]
    xs_all: list[list[Any]] = [[] for _ in range(n)]
    for s in epoch.streams:
        assert s.q is not None
        xs, qs = share(s.x, n, random_bytes=draw), share(s.q, n, random_bytes=draw)
        for i in range(n):
            per_party[i].append(
                StreamInput(s.gateway, s.sensor, s.timestamps_ns, xs[i], qs[i], None)
            )
            xs_all[i] += [xs[i], qs[i]]
    inputs = [EpochInput(epoch.start_ns, tuple(p)) for p in per_party]
    net = MemoryNetwork(n)
    dealer = RecordingDealer(n, hashlib.sha256(b"dealer" + seed).digest())
    recs = [Recorder(net.transport(i)) for i in range(n)]
    parties = [ViewParty(i, n, recs[i], dealer.source(i)) for i in range(n)]
    outs = await asyncio.gather(
        *(run_epoch(MpcOps(parties[i]), POLICY, inputs[i]) for i in range(n))
    )
    rels = [build_release(POLICY, inputs[i], outs[i], 16, n) for i in range(n)]
    return [
        PartyView(
            [np.concatenate(xs_all[i])],
            np.zeros(0, dtype=np.uint64),
            dealer.frames[i],
            recs[i].received,
            parties[i].opened,
            [rels[i].vector],
        )
        for i in range(n)
    ]


def _sample(runs: list[list[PartyView]], coalition: Any) -> Any:
    return np.stack([coalition_view(v, coalition) for v in runs])


@pytest.mark.parametrize("n", [2, 3])
async def test_coalitions_of_n_minus_1_learn_nothing_from_the_analytics(n: int) -> None:
    """No byte of an N − 1 coalition's view separates readings A from B; all N parties do."""
    runs_a = [await _run_once(n, EPOCH_A, f"A{n}/{r}".encode()) for r in range(RUNS)]
    runs_b = [await _run_once(n, EPOCH_B, f"B{n}/{r}".encode()) for r in range(RUNS)]
    released_a = reveal([v.outputs[0] for v in runs_a[0]])
    released_b = reveal([v.outputs[0] for v in runs_b[0]])
    assert (released_a != released_b).sum() > len(released_a) // 2  # A and B release differently
    for coalition in itertools.combinations(range(n), n - 1):
        res = compare(_sample(runs_a, coalition), _sample(runs_b, coalition))
        assert res.tests > 10_000
        assert not res.distinguishable, (coalition, res.rejected[:5])
    assert compare(_sample(runs_a, range(n)), _sample(runs_b, range(n))).distinguishable
