"""The shard map, its versions and records, and the split of a batch into shard parts (pure)."""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.party.maprecord import (
    MAX_HISTORY,
    ShardMapError,
    ShardMapRecord,
    build_maps,
    decode_record,
    initial_record,
    spec_digest,
    static_maps,
    with_change,
)
from cloud_tecc.party.shardmap import MapVersion, ShardMap, ShardMaps, split_row
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


def _maps(k: int, moves: list[tuple[int, dict[tuple[str, str], int]]]) -> ShardMaps:
    versions = [MapVersion(1, 0, "d1", ShardMap(k))]
    versions += [
        MapVersion(i + 2, at, f"d{i + 2}", ShardMap(k, over)) for i, (at, over) in enumerate(moves)
    ]
    return ShardMaps(tuple(versions))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows, st.integers(2, 5), st.lists(st.integers(0, 10**12), min_size=1, max_size=3))
def test_a_stream_moved_at_a_boundary_is_split_there(
    row: BatchRow, k: int, bounds: list[int]
) -> None:
    """Every reading lands once, in the shard of the version in force at its timestamp."""
    moves = [
        (at, {(row.gateway, s): (i + 1 + j) % k for j, s in enumerate(SENSORS)})
        for i, at in enumerate(sorted(set(bounds)))
        if at > 0
    ]
    maps = _maps(k, moves)
    parts = split_row(row, maps)
    got = sorted(
        (s.idx, int(t), int(x), shard)
        for shard, p in parts.items()
        for s in p.segments
        for t, x in zip(np.frombuffer(s.ts, "<i8"), np.frombuffer(s.x, "<u8"), strict=True)
    )
    want = sorted(
        (s.idx, int(t), int(t) * 3, maps.shard_of(row.gateway, s.sensor, int(t)))
        for s in row.segments
        for t in np.frombuffer(s.ts, "<i8")
    )
    assert got == want
    for part in parts.values():
        assert len({s.idx for s in part.segments}) == len(part.segments)  # one piece per shard
        ts = np.concatenate([np.frombuffer(s.ts, dtype="<i8") for s in part.segments])
        assert (part.count, part.min_ts, part.max_ts) == (len(ts), ts.min(), ts.max())


def test_versions_route_by_time_and_the_old_one_before_its_successor() -> None:
    maps = _maps(2, [(100, {("gw-a", "a"): 1}), (200, {("gw-a", "a"): 0})])
    assert [maps.at(t).version for t in (0, 99, 100, 199, 200, 10**18)] == [1, 1, 2, 2, 3, 3]
    assert maps.id_at(150) == "2:d2"
    row = _row([("a", [50, 150, 250, 160])])
    parts = split_row(row, maps)
    assert {k: np.frombuffer(p.segments[0].ts, "<i8").tolist() for k, p in parts.items()} == {
        0: [50, 250],
        1: [150, 160],
    }


POLICY = policy_from_mapping(
    {"window_s": 10, "min_count": 1, "fleet": {"classes": {"temperature": ["temp*"]}}}
)
W = 10 * 10**9


def test_k1_map_from_the_config_is_todays() -> None:
    """The config's map (no KV): one version, everything on shard 0, the same id everywhere."""
    maps = static_maps(1, POLICY)
    row = _row([("temp-1", [1, 2]), ("other", [4])])
    assert split_row(row, maps) == {0: row}
    assert maps.id_at(0) == static_maps(1, POLICY).id_at(10**18)
    assert maps.id_at(0) != static_maps(2, POLICY).id_at(0)
    two = static_maps(2, POLICY)
    legacy = ShardMap.for_policy(2, POLICY)
    assert all(
        two.shard_of(f"gw{g}", s, 0) == legacy.shard_of(f"gw{g}", s)
        for g in range(20)
        for s in ("temp-1", "other", "x")
    )


def test_records_that_do_not_fit_are_refused_naming_the_field() -> None:
    def refused(raw: dict[str, object], shards: int = 2) -> str:
        try:
            record = msgspec.convert(raw, ShardMapRecord)
            build_maps(record, shards=shards, policy=POLICY)
        except (msgspec.ValidationError, ShardMapError) as exc:
            return str(exc)
        raise AssertionError(f"{raw} was accepted")

    assert "shards" in refused({"version": 1, "shards": 0})
    assert "write a shard from 0 to 1" in refused({"version": 1, "shards": 2,
                                                    "overrides": {"gw/x": 2}})  # fmt: skip
    assert "class_overrides['temperature'] = 3" in refused(
        {"version": 1, "shards": 2, "class_overrides": {"temperature": 3}}
    )
    assert "must be 'gateway/sensor'" in refused({"version": 1, "shards": 2,
                                                   "overrides": {"gw": 0}})  # fmt: skip
    assert "this config says shards: 4" in refused({"version": 1, "shards": 2}, shards=4)
    assert "class_overrides: {'temperature': 1}" in refused(
        {"version": 1, "shards": 2, "overrides": {"gw/temp-1": 1}}
    )
    assert "not fleet classes" in refused(
        {"version": 1, "shards": 2, "class_overrides": {"pressure": 1}}
    )
    assert "not an epoch boundary" in refused({"version": 1, "shards": 2, "effective_ns": W + 1})
    assert "must follow version" in refused(
        {"version": 2, "shards": 2, "effective_ns": W,
         "history": [{"version": 2, "shards": 2, "effective_ns": 0}]}
    )  # fmt: skip
    assert "unknown field" in refused({"version": 1, "shards": 2, "extra": 1})


def test_a_change_keeps_the_old_version_and_a_bounded_history() -> None:
    record = initial_record(2)
    for i in range(MAX_HISTORY + 3):
        record = with_change(
            record, effective_ns=(i + 1) * W, overrides={"gw/x": i % 2}, class_overrides={}
        )
    assert record.version == MAX_HISTORY + 4
    assert len(record.history) == MAX_HISTORY
    maps = build_maps(record, shards=2, policy=POLICY)
    assert maps.current.map.shard_of("gw", "x") == (MAX_HISTORY + 2) % 2
    assert maps.at(0).version == record.history[0].version  # the oldest kept, before it too
    # the digest is of the version alone, stable, and changes with any field
    one = build_maps(record, shards=2, policy=POLICY).current.digest
    assert one == spec_digest(record)
    assert spec_digest(record) != spec_digest(
        msgspec.structs.replace(record, effective_ns=record.effective_ns + W)
    )


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
_keys = st.sampled_from(
    ["version", "shards", "rule", "effective_ns", "overrides", "class_overrides", "history"]
)
_records = st.dictionaries(_keys, _json) | st.fixed_dictionaries(
    {"version": st.integers(-2, 5), "shards": st.integers(-1, 4)},
    optional={
        "overrides": st.dictionaries(st.sampled_from(["gw/temp-1", "gw/x", "x", ""]), _json),
        "class_overrides": st.dictionaries(st.sampled_from(["temperature", "nope"]), _json),
        "effective_ns": st.integers(-1, 3 * W),
        "history": st.lists(
            st.fixed_dictionaries({"version": st.integers(0, 3), "shards": st.integers(0, 3)})
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_records.map(msgspec.json.encode), st.binary(max_size=64)))
def test_any_stored_bytes_build_a_map_or_are_refused_with_a_shard_map_error(raw: bytes) -> None:
    """What the KV holds is outside input to a frontend: it builds, or ShardMapError says why."""
    why = ""
    try:
        record = decode_record(raw, where="tecc_shards/map")
        maps = build_maps(record, shards=2, policy=POLICY)
    except ShardMapError as exc:
        why = str(exc)
    if why:
        assert "tecc_shards/map" in why
        return
    assert maps.k == 2
    assert all(0 <= maps.shard_of("gw", s, t) < 2 for s in ("temp-1", "x") for t in (0, 5 * W))
