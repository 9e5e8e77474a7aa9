"""The dealer's batch plan, traced from a dry run of the analytics program.

:func:`plan_for` builds a synthetic epoch of the given number of readings —
two gateways, one stream for each sensor pattern the policy names (limits,
rates, fleet classes) plus one it does not, every stream in its steady state
(a full z-score history of ``zscore.window`` readings) with the gateway's x²
column, as the shipped gateway config sends it — runs the secure program on
it once over the in-memory transport (:func:`cloud_tecc.mpc.trace.trace_plan`),
and takes the correlations it used as one batch. The program is
data-oblivious, so the zero values of the dry run do not matter, only the
shapes do. A real epoch with another mix (a gateway without the x² column,
more short windows) uses the kinds in other proportions: the party's dealer
client then fetches another batch and trims the kinds it holds too many of
(:mod:`cloud_tecc.mpc.dealer_client`), so a plan never has to over-provide.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np

from cloud_tecc.analytics.plan import EpochInput, StreamInput, StreamState
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.secure import secure_epoch
from cloud_tecc.mpc.correlations import Plan
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.trace import trace_plan

_U64 = np.uint64
_GATEWAYS = ("dry-gw-0", "dry-gw-1")
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


def dry_run_epoch(policy: AnalyticsPolicy, readings: int) -> EpochInput:
    """A steady-state epoch of ``readings`` zero readings, spread over the sensors."""
    keys = [(g, s) for g in _GATEWAYS for s in dry_run_sensors(policy)]
    per, extra = divmod(max(readings, len(keys)), len(keys))
    w, window = policy.zscore.window, policy.window_ns
    streams = []
    for i, (gateway, sensor) in enumerate(keys):
        n = per + (1 if i < extra else 0)
        ts = np.linspace(0, window - 1, n, dtype=np.int64)
        state = StreamState(np.zeros(1, _U64), np.zeros(w, _U64), np.zeros(w, _U64))
        zero = np.zeros(n, _U64)
        streams.append(StreamInput(gateway, sensor, ts, zero, zero.copy(), state))
    return EpochInput(0, tuple(streams))


def plan_for(policy: AnalyticsPolicy, readings: int) -> Plan:
    """One dealer batch: the correlations the program uses for ``readings`` readings."""
    epoch = dry_run_epoch(policy, readings)

    async def program(party: Party) -> object:
        return await secure_epoch(party, policy, epoch)

    return asyncio.run(trace_plan(program))
