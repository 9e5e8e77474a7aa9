"""Sans-IO epoch bookkeeping: which epoch is due, and its inputs from stored segments.

An epoch is the window ``[start, start + window)`` of every stream. Party 0
proposes the earliest epoch after the common watermark that holds data and
has closed, together with the list of batches it includes. An epoch is closed
when every gateway that sent readings for it or was active recently has since
sent readings past its end, or — for a stalled gateway or replayed history —
when its end plus the grace period lies in the past and no batch for it
arrived within the grace period; both parties then build the identical
:class:`~cloud_tecc.analytics.plan.EpochInput` from those batches only.
Readings of a stream are ordered by (timestamp, gateway seq, position).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_tecc.analytics.plan import EpochInput, Int64Array, StreamInput, StreamState
from cloud_tecc.errors import PeerError
from cloud_tecc.party.store import StoredSegment
from tecc_contract.ring import RingArray


@dataclass(frozen=True, slots=True)
class Proposal:
    """The leader's choice for the next epoch."""

    start_ns: int
    end_ns: int
    batches: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        """JSON form for the peer channel."""
        return {
            "start": self.start_ns,
            "end": self.end_ns,
            "batches": [list(b) for b in self.batches],
        }

    @classmethod
    def from_json(cls, obj: Any) -> Proposal:
        """Parse the peer's JSON; :class:`PeerError` if malformed."""
        try:
            batches = tuple((str(g), int(s)) for g, s in obj["batches"])
            return cls(int(obj["start"]), int(obj["end"]), batches)
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"malformed epoch proposal: {exc}") from exc


def epoch_of(earliest_ns: int, window_ns: int) -> tuple[int, int]:
    """The epoch ``(start, end)`` holding the timestamp ``earliest_ns``."""
    start = (earliest_ns // window_ns) * window_ns
    return start, start + window_ns


def is_closed(
    end_ns: int, activity: Sequence[tuple[str, int, int]], now_ns: int, grace_ns: int
) -> bool:
    """Closing rule; ``activity`` is (gateway, last receipt for the epoch, gateway progress)."""
    if not activity:
        return False
    if all(progress >= end_ns for _, _, progress in activity):
        return True
    quiet = all(received + grace_ns <= now_ns for _, received, _ in activity)
    return end_ns + grace_ns <= now_ns and quiet


def build_epoch(
    start_ns: int,
    end_ns: int,
    segments: Sequence[StoredSegment],
    states: Mapping[tuple[str, str], StreamState],
) -> EpochInput:
    """Group the epoch's readings into streams sorted by (gateway, sensor)."""
    parts: dict[tuple[str, str], list[tuple[Int64Array, Int64Array, RingArray, RingArray | None]]]
    parts = defaultdict(list)
    for seg in segments:
        m = (seg.ts >= start_ns) & (seg.ts < end_ns)
        if not m.any():
            continue
        order_key = np.full(int(m.sum()), seg.seq, dtype=np.int64)
        parts[(seg.gateway, seg.sensor)].append(
            (seg.ts[m], order_key, seg.x[m], None if seg.q is None else seg.q[m])
        )
    streams = []
    for key in sorted(parts):
        rows = parts[key]
        ts = np.concatenate([r[0] for r in rows])
        seqs = np.concatenate([r[1] for r in rows])
        x = np.concatenate([r[2] for r in rows])
        has_q = all(r[3] is not None for r in rows)
        q = np.concatenate([r[3] for r in rows if r[3] is not None]) if has_q else None
        order = np.lexsort((np.arange(len(ts)), seqs, ts))
        streams.append(
            StreamInput(
                gateway=key[0],
                sensor=key[1],
                timestamps_ns=ts[order],
                x=x[order],
                q=None if q is None else q[order],
                state=states.get(key),
            )
        )
    return EpochInput(start_ns, tuple(streams))
