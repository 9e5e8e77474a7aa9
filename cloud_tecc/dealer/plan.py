"""The dealer's batch plan, traced from dry runs of the analytics program.

:func:`plan_for` traces the secure program (:func:`cloud_tecc.mpc.trace.trace_plan`,
over the in-memory transport) on synthetic epochs of the given number of
readings and takes, per correlation kind, the most any of them used. The
epochs (:func:`dry_run_epochs`): for every sensor pattern the policy names
(limits, rates, fleet classes) and one it does not, all readings on such a
sensor, once as two long streams and once as many short ones
(:data:`SHORT_STREAM` readings each), every stream in its steady state (a full
z-score history of ``zscore.window`` readings) with the gateway's x² column
as the shipped gateway config sends it. The program is data-oblivious, so
the zero values of a dry run do not matter, only the shapes do; and a real
epoch, a mix of such streams, needs per reading no more of a kind than the
most demanding pure one. Should a mix still use a kind faster (a gateway
without the x² column), the party's dealer client fetches another batch and
trims what it holds too much of (:mod:`cloud_tecc.mpc.dealer_client`).
"""

from __future__ import annotations

import asyncio
import re

import numpy as np

from cloud_tecc.analytics.minmax import max_products, max_selects
from cloud_tecc.analytics.plan import EpochInput, StreamInput, StreamState
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.secure import secure_epoch
from cloud_tecc.mpc.correlations import Plan
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.trace import trace_plan

_U64 = np.uint64
_UNMATCHED = "dry.unmatched-sensor"


def _sample(pattern: str) -> str:
    """A sensor id that the fnmatch ``pattern`` matches (wildcards filled with 'x')."""
    return re.sub(r"\[[^\]]*\]", "x", pattern).replace("*", "x").replace("?", "x")


def dry_run_sensors(policy: AnalyticsPolicy) -> list[str]:
    """One sensor id per pattern of the policy, plus one no rule matches."""
    patterns = [r.sensor for r in policy.limits] + [r.sensor for r in policy.rates]
    for name in sorted(policy.fleet.classes):
        patterns.extend(policy.fleet.classes[name])
    return sorted({_sample(p) for p in patterns} | {_UNMATCHED})


#: Readings per stream of the "many short streams" dry run.
SHORT_STREAM = 100


def _epoch(policy: AnalyticsPolicy, sensor: str, readings: int, per_stream: int) -> EpochInput:
    """``readings`` zero readings of ``sensor``, ``per_stream`` per gateway stream."""
    count = max(2, readings // per_stream)
    per, extra = divmod(max(readings, count), count)
    w, window = policy.zscore.window, policy.window_ns
    streams = []
    for i in range(count):
        n = per + (1 if i < extra else 0)
        ts = np.linspace(0, window - 1, n, dtype=np.int64)
        state = StreamState(np.zeros(1, _U64), np.zeros(w, _U64), np.zeros(w, _U64))
        zero = np.zeros(n, _U64)
        streams.append(StreamInput(f"dry-gw-{i}", sensor, ts, zero, zero.copy(), state))
    return EpochInput(0, tuple(streams))


def dry_run_epochs(policy: AnalyticsPolicy, readings: int) -> list[EpochInput]:
    """The synthetic epochs the plan is traced on (each of ``readings`` readings)."""
    lengths = sorted({max(1, readings // 2), max(policy.min_count, SHORT_STREAM)})
    return [
        _epoch(policy, sensor, readings, length)
        for sensor in dry_run_sensors(policy)
        for length in lengths
    ]


def plan_for(policy: AnalyticsPolicy, readings: int) -> Plan:
    """One dealer batch for ``readings`` readings: per kind, the most a dry run used.

    Comparisons with select (the min/max) are planned at their bound
    (:func:`~cloud_tecc.analytics.minmax.max_selects`) when the program uses
    them: their share per reading depends on the windows' lengths, beyond what
    a dry run of ``readings`` shows, and a short kind makes every party fetch
    a whole extra batch. The min/max's products are planned at their bound too
    (:func:`~cloud_tecc.analytics.minmax.max_products`): windows shorter than
    the dry runs' take more of them per reading, and a small batch's dry runs
    (windows too short for a four-way level) take none, which would leave the
    kind out of the plan and end every session.
    """

    async def trace_all() -> list[Plan]:
        plans = []
        for epoch in dry_run_epochs(policy, readings):

            async def program(party: Party, epoch: EpochInput = epoch) -> object:
                return await secure_epoch(party, policy, epoch)

            plans.append(await trace_plan(program))
        return plans

    plans = asyncio.run(trace_all())
    minmax = max(p.compare_selects for p in plans) > 0  # the program runs the min/max
    return Plan(
        triples=max(*(p.triples for p in plans), max_products(readings) if minmax else 0),
        truncs=max(p.truncs for p in plans),
        dabits=max(p.dabits for p in plans),
        comparisons=max(p.comparisons for p in plans),
        squares=max(p.squares for p in plans),
        compare_selects=max_selects(readings) if minmax else 0,
    )
