"""Sans-IO epoch bookkeeping: when an epoch is closed, and its inputs from stored segments.

An epoch is the window ``[start, start + window)`` of every stream. Party 0
proposes the earliest epoch after the common watermark that holds data and
has closed, together with the list of batches it includes; party 1 accepts
only if it holds exactly those batches and the epoch is closed in its own
view too.

Closing rule (:class:`ProgressTracker`): an epoch is closed when every *live*
enrolled gateway has declared, in a signed progress notice
(:mod:`tecc_contract.progress`), that it has delivered everything before the
epoch's end. A gateway is live while it has been heard from (a notice or a
batch) within ``active_s`` of this party running: a restarted party waits up
to ``active_s`` for gateways it has not heard from yet, so a backlog in a
gateway's spool is never overtaken. A gateway silent for longer stops holding
epochs back; whatever it delivers later for a computed epoch is counted as
late, never analysed. Readings of a stream are ordered by (timestamp,
gateway seq, position).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_tecc.analytics.plan import EpochInput, Int64Array, StreamInput, StreamState
from cloud_tecc.errors import PeerError
from cloud_tecc.party.store import StoredSegment
from tecc_contract.ring import RingArray

Key = tuple[str, int]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Proposal:
    """The leader's choice for the next epoch.

    ``skip`` lists orphaned batches: held by one party only, from a gateway
    neither party has heard from within ``active_s``, so the other share will
    never come. Both parties leave them out (and count them). ``run`` names
    this computation of the epoch: it goes into the result layout, so the
    output service never adds a share of one computation to a share of
    another (an epoch is recomputed when a party lost its commit, with fresh
    correlations, and the two computations' shares do not sum to the result).
    """

    start_ns: int
    end_ns: int
    batches: tuple[Key, ...]
    skip: tuple[Key, ...] = ()
    run: str = ""
    #: The shard map version in force for the epoch (``MapVersion.id``): every party must
    #: route by the same one, or the shards' share columns would not belong together.
    map: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form for the peer channel (``map`` only when set)."""
        doc: dict[str, Any] = {
            "start": self.start_ns,
            "end": self.end_ns,
            "batches": [list(b) for b in self.batches],
            "skip": [list(b) for b in self.skip],
            "run": self.run,
        }
        if self.map:
            doc["map"] = self.map
        return doc

    @classmethod
    def from_json(cls, obj: Any) -> Proposal:
        """Parse the peer's JSON; :class:`PeerError` if malformed."""
        try:
            batches = keys_from_json(obj["batches"])
            skip = keys_from_json(obj.get("skip", []))
            run, smap = str(obj.get("run", "")), str(obj.get("map", ""))
            return cls(int(obj["start"]), int(obj["end"]), batches, skip, run, smap)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PeerError(f"malformed epoch proposal: {exc}") from exc


def keys_from_json(obj: Any) -> tuple[Key, ...]:
    """Batch keys from their JSON form (pairs); TypeError/ValueError if malformed."""
    return tuple((str(g), int(s)) for g, s in obj)


def epoch_of(earliest_ns: int, window_ns: int) -> tuple[int, int]:
    """The epoch ``(start, end)`` holding the timestamp ``earliest_ns``."""
    start = (earliest_ns // window_ns) * window_ns
    return start, start + window_ns


class ProgressTracker:
    """Per-gateway declared progress and liveness, in memory (notices repeat every second).

    ``started_ns`` is when this party started: a gateway not heard from since
    counts as heard then, so it stays live for ``active_ns`` after a restart.
    """

    def __init__(self, gateways: Iterable[str], *, started_ns: int, active_ns: int) -> None:
        self._active_ns = active_ns
        self._through: dict[str, int] = dict.fromkeys(gateways, 0)
        self._heard: dict[str, int] = dict.fromkeys(self._through, started_ns)
        #: Called when the closing rule's inputs change: a gateway's progress moved forward
        #: or a gateway was added (the epoch loop's wake-up, :mod:`~cloud_tecc.party.pacing`).
        #: A batch alone never makes an epoch closable (its gateway declares it delivered
        #: afterwards, in a notice), so batches do not call it.
        self.on_news: Callable[[], None] | None = None

    def _news(self) -> None:
        if self.on_news is not None:
            self.on_news()

    def note(self, gateway: str, through_ns: int, heard_ns: int) -> None:
        """A verified, fresh notice; progress only moves forward."""
        if gateway not in self._through:
            return
        if through_ns > self._through[gateway]:
            self._through[gateway] = through_ns
            self._news()
        self._heard[gateway] = max(self._heard[gateway], heard_ns)

    def add(self, gateway: str, heard_ns: int) -> None:
        """Track a gateway enrolled while running (no-op if tracked already)."""
        if gateway not in self._through:
            self._through[gateway] = 0
            self._heard[gateway] = heard_ns
            self._news()

    def heard(self, gateway: str, heard_ns: int) -> None:
        """A batch arrived from ``gateway``: it is alive (its progress is unchanged)."""
        if gateway in self._heard:
            self._heard[gateway] = max(self._heard[gateway], heard_ns)

    def next_expiry_ns(self, now_ns: int) -> int | None:
        """When the next live gateway stops being live if not heard from (None: none live);
        the only change of :meth:`closed` that no notice or batch announces."""
        ends = [h + self._active_ns for h in self._heard.values() if h + self._active_ns > now_ns]
        return min(ends, default=None)

    def live(self, now_ns: int) -> dict[str, int]:
        """Live gateways and their declared progress."""
        return {
            g: self._through[g]
            for g, heard in self._heard.items()
            if heard + self._active_ns > now_ns
        }

    def closed(self, end_ns: int, now_ns: int, ignore: Collection[str] = ()) -> bool:
        """Whether every live gateway not in ``ignore`` delivered everything before ``end_ns``."""
        return all(t >= end_ns for g, t in self.live(now_ns).items() if g not in ignore)

    def snapshot(self, now_ns: int) -> dict[str, dict[str, float | bool]]:
        """For ``/healthz``: per gateway, progress and silence in seconds, and liveness."""
        live = self.live(now_ns)
        return {
            g: {
                "through_s": self._through[g] / 1e9,
                "silent_s": round((now_ns - self._heard[g]) / 1e9, 3),
                "live": g in live,
            }
            for g in sorted(self._through)
        }


def _one_scale(key: tuple[str, str], segs: list[StoredSegment]) -> list[StoredSegment]:
    """The segments in the scale of the stream's newest batch; others are dropped and logged.

    Values in two scales cannot share one window (a gateway whose sensor's
    scale_range changed mid-window); every party holds the same headers, so
    all drop the same readings.
    """
    newest = max(segs, key=lambda s: s.seq).scale
    keep = [s for s in segs if s.scale == newest]
    if len(keep) < len(segs):
        dropped = sum(len(s.ts) for s in segs if s.scale != newest)
        log.warning(
            "stream %s/%s changed its scale within an epoch; %d reading(s) in the older "
            "scale left out (a sensor's scale_range was edited at the gateway)",
            key[0],
            key[1],
            dropped,
        )
    return keep


def build_epoch(
    start_ns: int,
    end_ns: int,
    segments: Sequence[StoredSegment],
    states: Mapping[tuple[str, str], StreamState],
) -> EpochInput:
    """Group the epoch's readings into streams sorted by (gateway, sensor)."""
    by_key: dict[tuple[str, str], list[StoredSegment]] = defaultdict(list)
    for seg in segments:
        by_key[(seg.gateway, seg.sensor)].append(seg)
    parts: dict[tuple[str, str], list[tuple[Int64Array, Int64Array, RingArray, RingArray | None]]]
    parts = defaultdict(list)
    scales = {}
    for key, segs in by_key.items():
        for seg in _one_scale(key, segs):
            m = (seg.ts >= start_ns) & (seg.ts < end_ns)
            if not m.any():
                continue
            scales[key] = seg.scale
            order_key = np.full(int(m.sum()), seg.seq, dtype=np.int64)
            parts[key].append((seg.ts[m], order_key, seg.x[m], None if seg.q is None else seg.q[m]))
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
                scale=scales[key],
            )
        )
    return EpochInput(start_ns, tuple(streams))
