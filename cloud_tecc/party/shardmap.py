"""Which shard of a party holds a stream, and one batch split into per-shard parts (pure).

A party runs K shard workers; each stream (gateway, sensor) belongs to
exactly one shard. Default rule (docs/CLOUD.md, "JetStream layout"):

* a sensor in a fleet class of the analytics policy goes to
  ``hash(class) mod K`` — the fleet statistics and deviation flags need the
  whole class in one MPC session to stay exact;
* any other stream goes to ``hash(gateway, sensor) mod K``;
* an override (stream → shard) wins over both.

``hash`` is the first 8 bytes, big-endian, of SHA-256 over ``b"fleet\\0" +
class`` or ``b"stream\\0" + gateway + b"\\0" + sensor`` (UTF-8). K = 1 puts
everything on shard 0 (today's results exactly). Every party and frontend
computes the same map from the same policy, so worker k of every party holds
the same streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.party.store import BatchRow, SegmentRow

Stream = tuple[str, str]


def _hash(*parts: str, kind: bytes) -> int:
    digest = hashlib.sha256(kind + b"\0" + b"\0".join(p.encode() for p in parts)).digest()
    return int.from_bytes(digest[:8], "big")


def _no_class(_sensor: str) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class ShardMap:
    """K shards, per-stream overrides, and the policy's fleet classes."""

    k: int
    overrides: Mapping[Stream, int] = field(default_factory=dict)
    fleet_class: Callable[[str], str | None] = _no_class

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"a shard map needs shards >= 1, got {self.k}")
        bad = {s: v for s, v in self.overrides.items() if not 0 <= v < self.k}
        if bad:
            raise ValueError(f"shard overrides outside 0..{self.k - 1}: {bad}")

    @classmethod
    def for_policy(
        cls, k: int, policy: AnalyticsPolicy, overrides: Mapping[Stream, int] | None = None
    ) -> ShardMap:
        """The map of a party's ``shards`` under its analytics policy."""
        return cls(k, dict(overrides or {}), policy.fleet_class)

    def shard_of(self, gateway: str, sensor: str) -> int:
        """The shard holding the stream ``(gateway, sensor)``."""
        if self.k == 1:
            return 0
        fixed = self.overrides.get((gateway, sensor))
        if fixed is not None:
            return fixed
        klass = self.fleet_class(sensor)
        if klass is not None:
            return _hash(klass, kind=b"fleet") % self.k
        return _hash(gateway, sensor, kind=b"stream") % self.k


def _bounds(segments: tuple[SegmentRow, ...]) -> tuple[int, int, int]:
    ts = [np.frombuffer(s.ts, dtype="<i8") for s in segments]
    return (
        sum(len(t) for t in ts),
        min(int(t.min()) for t in ts),
        max(int(t.max()) for t in ts),
    )


def split_row(row: BatchRow, shard_map: ShardMap) -> dict[int, BatchRow]:
    """One part per shard holding a stream of ``row``; each segment in exactly one part.

    A part keeps the batch's key, frame digest and receipt time (the gateway's
    ack covers the whole frame) and the segments' original ``idx``; its count
    and timestamp bounds are its own. A row of one shard is returned unchanged.
    """
    groups: dict[int, list[SegmentRow]] = {}
    for seg in row.segments:
        groups.setdefault(shard_map.shard_of(row.gateway, seg.sensor), []).append(seg)
    if len(groups) == 1:
        return {next(iter(groups)): row}
    parts = {}
    for shard, segs in sorted(groups.items()):
        segments = tuple(segs)
        count, lo, hi = _bounds(segments)
        parts[shard] = BatchRow(
            gateway=row.gateway,
            seq=row.seq,
            digest=row.digest,
            received_ns=row.received_ns,
            count=count,
            min_ts=lo,
            max_ts=hi,
            has_q=row.has_q,
            segments=segments,
        )
    return parts
