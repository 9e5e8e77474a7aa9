"""Which shard of a party holds a stream, and one batch split into per-shard parts (pure).

A party runs K shard workers; each stream (gateway, sensor) belongs to
exactly one shard. Default rule (docs/CLOUD.md, "JetStream layout"):

* a sensor in a fleet class of the analytics policy goes to
  ``hash(class) mod K`` — the fleet statistics and deviation flags need the
  whole class in one MPC session to stay exact;
* any other stream goes to ``hash(gateway, sensor) mod K``;
* an override (stream → shard) wins over both, and a class override (fleet
  class → shard) places a whole class.

The map a party uses is versioned and kept in the party's JetStream KV
(:mod:`cloud_tecc.jetstream.shardmaps`, record :mod:`cloud_tecc.party.maprecord`):
:class:`ShardMaps` is its in-memory form, every version with the epoch boundary
from which it applies; a reading is routed by the version in force at its
timestamp, so a stream's window is always in one shard.

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
import numpy.typing as npt

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
    class_overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"a shard map needs shards >= 1, got {self.k}")
        bad: dict[object, int] = {s: v for s, v in self.overrides.items() if not 0 <= v < self.k}
        bad.update({c: v for c, v in self.class_overrides.items() if not 0 <= v < self.k})
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
            placed = self.class_overrides.get(klass)
            return placed if placed is not None else _hash(klass, kind=b"fleet") % self.k
        return _hash(gateway, sensor, kind=b"stream") % self.k


@dataclass(frozen=True, slots=True)
class MapVersion:
    """One version of a party's map: from which epoch boundary it applies, its digest."""

    version: int
    effective_ns: int
    digest: str  # hex SHA-256 of the record's canonical form (maprecord.spec_digest)
    map: ShardMap

    @property
    def id(self) -> str:
        """``<version>:<first 16 hex of the digest>``, as the epoch agreement compares it."""
        return f"{self.version}:{self.digest[:16]}"


@dataclass(frozen=True, slots=True)
class ShardMaps:
    """A party's map versions, oldest first; each applies from its ``effective_ns``.

    The oldest kept version also applies before its own boundary (the record
    keeps a bounded history).
    """

    versions: tuple[MapVersion, ...]

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("a shard map needs at least one version")
        ks = {v.map.k for v in self.versions}
        if len(ks) != 1:
            raise ValueError(f"every version of a shard map needs the same shards, got {ks}")
        bounds = [v.effective_ns for v in self.versions]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"shard map versions must apply from increasing times: {bounds}")

    @property
    def k(self) -> int:
        """The number of shards."""
        return self.versions[0].map.k

    @property
    def current(self) -> MapVersion:
        """The newest version."""
        return self.versions[-1]

    def at(self, ts_ns: int) -> MapVersion:
        """The version in force at ``ts_ns``."""
        for v in reversed(self.versions):
            if v.effective_ns <= ts_ns:
                return v
        return self.versions[0]

    def id_at(self, ts_ns: int) -> str:
        """The id of the version in force at ``ts_ns`` (what the epoch agreement compares)."""
        return self.at(ts_ns).id

    def shard_of(self, gateway: str, sensor: str, ts_ns: int) -> int:
        """The shard holding the stream's reading at ``ts_ns``."""
        return self.at(ts_ns).map.shard_of(gateway, sensor)


def _bounds(segments: tuple[SegmentRow, ...]) -> tuple[int, int, int]:
    ts = [np.frombuffer(s.ts, dtype="<i8") for s in segments]
    return (
        sum(len(t) for t in ts),
        min(int(t.min()) for t in ts),
        max(int(t.max()) for t in ts),
    )


def _take(seg: SegmentRow, mask: npt.NDArray[np.bool_]) -> SegmentRow:
    """The readings of ``seg`` where ``mask`` holds (same index, sensor and scale)."""

    def cut(col: bytes, dtype: str) -> bytes:
        return np.frombuffer(col, dtype=dtype)[mask].tobytes()

    q = None if seg.q is None else cut(seg.q, "<u8")
    return SegmentRow(seg.idx, seg.sensor, cut(seg.ts, "<i8"), cut(seg.x, "<u8"), q, seg.scale)


def _route(
    gateway: str, seg: SegmentRow, shard_map: ShardMap | ShardMaps
) -> list[tuple[int, SegmentRow]]:
    """The shard(s) of one segment: whole, or its readings split at a version boundary."""
    if isinstance(shard_map, ShardMap):
        return [(shard_map.shard_of(gateway, seg.sensor), seg)]
    if len(shard_map.versions) == 1:
        return [(shard_map.versions[0].map.shard_of(gateway, seg.sensor), seg)]
    shards = [v.map.shard_of(gateway, seg.sensor) for v in shard_map.versions]
    if len(set(shards)) == 1:
        return [(shards[0], seg)]
    ts = np.frombuffer(seg.ts, dtype="<i8")
    lo, hi = shard_map.at(int(ts.min())), shard_map.at(int(ts.max()))
    if lo is hi:  # the segment lies within one version (the usual case)
        return [(lo.map.shard_of(gateway, seg.sensor), seg)]
    bounds = np.array([v.effective_ns for v in shard_map.versions[1:]], dtype=np.int64)
    per_reading = np.asarray(shards, dtype=np.int64)[np.searchsorted(bounds, ts, side="right")]
    present = np.unique(per_reading)
    if len(present) == 1:
        return [(int(present[0]), seg)]
    return [(int(k), _take(seg, per_reading == k)) for k in present]


def split_row(row: BatchRow, shard_map: ShardMap | ShardMaps) -> dict[int, BatchRow]:
    """One part per shard holding a stream of ``row``; each reading in exactly one part.

    A part keeps the batch's key, frame digest and receipt time (the gateway's
    ack covers the whole frame) and the segments' original ``idx``; its count
    and timestamp bounds are its own. A row of one shard is returned unchanged.
    With versions (:class:`ShardMaps`) a segment whose stream changes shard at
    a version's boundary is split there: its readings before the boundary go to
    the old shard, the others to the new one (the same index in both parts).
    """
    groups: dict[int, list[SegmentRow]] = {}
    for seg in row.segments:
        for shard, piece in _route(row.gateway, seg, shard_map):
            groups.setdefault(shard, []).append(piece)
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
