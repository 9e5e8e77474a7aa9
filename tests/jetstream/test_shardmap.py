"""The shard map and the split of a batch into per-shard parts (pure; property tests)."""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_tecc.party.shardmap import ShardMap, split_row
from cloud_tecc.party.store import BatchRow, SegmentRow

SENSORS = [f"s{i}" for i in range(12)]


def _row(sensor_ts: list[tuple[str, list[int]]]) -> BatchRow:
    segs = []
    for i, (sensor, ts) in enumerate(sensor_ts):
        t = np.asarray(ts, dtype="<i8")
        segs.append(SegmentRow(i, sensor, t.tobytes(), (t * 3).astype("<u8").tobytes(), None))
    flat = [t for _, ts in sensor_ts for t in ts]
    return BatchRow("gw-a", 7, b"\x01" * 32, 5, len(flat), min(flat), max(flat), False, tuple(segs))


rows = st.lists(
    st.tuples(st.sampled_from(SENSORS), st.lists(st.integers(0, 10**12), min_size=1, max_size=5)),
    min_size=1,
    max_size=10,
).map(_row)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows, st.integers(1, 6))
def test_parts_remerge_to_the_row_and_each_segment_is_in_one_part(row: BatchRow, k: int) -> None:
    smap = ShardMap(k)
    parts = split_row(row, smap)
    merged = sorted((s for p in parts.values() for s in p.segments), key=lambda s: s.idx)
    assert tuple(merged) == row.segments
    for shard, part in parts.items():
        assert all(smap.shard_of(row.gateway, s.sensor) == shard for s in part.segments)
        ts = np.concatenate([np.frombuffer(s.ts, dtype="<i8") for s in part.segments])
        assert (part.count, part.min_ts, part.max_ts) == (len(ts), ts.min(), ts.max())
        assert (part.gateway, part.seq, part.digest) == (row.gateway, row.seq, row.digest)
    assert sum(p.count for p in parts.values()) == row.count
    streams = [(row.gateway, s.sensor) for p in parts.values() for s in p.segments]
    owners = {st_: {k_ for k_, p in parts.items() for s in p.segments if s.sensor == st_[1]}
              for st_ in streams}  # fmt: skip
    assert all(len(v) == 1 for v in owners.values())


def test_one_shard_keeps_the_row_and_fleet_classes_stay_together() -> None:
    row = _row([("temp-1", [1, 2]), ("temp-2", [3]), ("other", [4])])
    assert split_row(row, ShardMap(1)) == {0: row}
    classes = {"temp-1": "temp", "temp-2": "temp"}
    smap = ShardMap(8, fleet_class=classes.get)
    assert len({smap.shard_of(f"gw{g}", f"temp-{i}") for g in range(20) for i in (1, 2)}) == 1
    # streams outside a class spread over the shards by (gateway, sensor)
    assert len({smap.shard_of(f"gw{g}", "other") for g in range(40)}) > 1
    fixed = ShardMap(8, {("gw0", "other"): 5}, classes.get)
    assert fixed.shard_of("gw0", "other") == 5


def test_the_hash_rule_is_the_documented_one() -> None:
    """SHA-256 over b"stream\\0" + gateway + b"\\0" + sensor, first 8 bytes big-endian, mod K."""
    h = int.from_bytes(hashlib.sha256(b"stream\0gw-a\0s1").digest()[:8], "big")
    assert ShardMap(7).shard_of("gw-a", "s1") == h % 7
