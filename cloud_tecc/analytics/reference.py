"""The plaintext reference analytics: the exact algorithm on fixed-point ring values.

It runs :func:`~cloud_tecc.analytics.program.run_epoch` with
:class:`~cloud_tecc.analytics.ops.PlainOps` on the values the gateway encodes
(``VALUE`` and ``SQUARE`` columns of the contract), keeping the same
per-stream state across epochs. What the clusters release must equal what
this releases: exactly for counts, sums, min/max, limit and rate flags; up to
the truncation error bound for z-score and fleet flags (docs/CLOUD.md).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_tecc.analytics.layout import as_layout
from cloud_tecc.analytics.ops import PlainOps
from cloud_tecc.analytics.plan import EpochInput, StreamInput, StreamState
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.program import EpochOutput, run_epoch
from cloud_tecc.analytics.release import Decoded, build_release, decode
from tecc_contract.envelope import derive_columns
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.header import Column
from tecc_contract.scale import IDENTITY, Scale


@dataclass(frozen=True, slots=True, eq=False)
class StreamReadings:
    """Plaintext readings of one stream (any order; sorted by timestamp here).

    ``scale`` is the sensor's scale, as the gateway would derive it from the
    declared range (:meth:`tecc_contract.scale.Scale.for_range`).
    """

    gateway: str
    sensor: str
    timestamps_ns: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    scale: Scale = IDENTITY


_Row = tuple[str, str, npt.NDArray[np.int64], npt.NDArray[np.float64], Scale]


@dataclass(frozen=True, slots=True, eq=False)
class EpochResult:
    """Reference output of one epoch: the program output and the released rows."""

    epoch: EpochInput
    output: EpochOutput
    released: Decoded


class ReferenceAnalytics:
    """Plaintext evaluation of the secure analytics, epoch after epoch."""

    def __init__(
        self, policy: AnalyticsPolicy, codec: FixedPoint | None = None, *, squares: bool = True
    ) -> None:
        self.policy = policy
        self.codec = codec or FixedPoint()
        self.squares = squares
        self.states: dict[tuple[str, str], StreamState] = {}

    def _stream(
        self,
        gw: str,
        sensor: str,
        ts: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        scale: Scale,
    ) -> StreamInput:
        cols = (Column.VALUE, Column.SQUARE) if self.squares else (Column.VALUE,)
        enc = derive_columns(values, cols, self.codec, scaled=scale.scaled(values))
        return StreamInput(
            gateway=gw,
            sensor=sensor,
            timestamps_ns=ts,
            x=enc[0],
            q=enc[1] if self.squares else None,
            state=self.states.get((gw, sensor)),
            scale=scale,
        )

    async def run(self, streams: Iterable[StreamReadings]) -> list[EpochResult]:
        """Process all readings epoch by epoch (ascending), updating the state."""
        by_epoch: dict[int, list[_Row]] = defaultdict(list)
        wn = self.policy.window_ns
        for s in sorted(streams, key=lambda s: (s.gateway, s.sensor)):
            order = np.argsort(s.timestamps_ns, kind="stable")
            ts, vals = s.timestamps_ns[order], s.values[order]
            ep = (ts // wn) * wn
            for e in np.unique(ep):
                m = ep == e
                by_epoch[int(e)].append((s.gateway, s.sensor, ts[m], vals[m], s.scale))
        results = []
        ops = PlainOps(self.codec.frac_bits)
        for start in sorted(by_epoch):
            epoch = EpochInput(start, tuple(self._stream(*row) for row in by_epoch[start]))
            out = await run_epoch(ops, self.policy, epoch)
            for sin, st in zip(epoch.streams, out.states, strict=True):
                self.states[(sin.gateway, sin.sensor)] = st
            rel = build_release(self.policy, epoch, out, self.codec.frac_bits)
            results.append(EpochResult(epoch, out, decode(as_layout(rel.layout), rel.vector)))
        return results


def run_reference(
    policy: AnalyticsPolicy, streams: Iterable[StreamReadings], *, squares: bool = True
) -> list[EpochResult]:
    """Synchronous convenience wrapper around :meth:`ReferenceAnalytics.run`.

    Uses a private event loop rather than :func:`asyncio.run`, whose SIGINT
    bookkeeping formats the (large) result with ``repr`` on Python 3.11.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(ReferenceAnalytics(policy, squares=squares).run(streams))
    finally:
        loop.close()
