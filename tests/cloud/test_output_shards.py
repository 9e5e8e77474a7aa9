"""The output store keyed by (shard, epoch): both shards stored, idempotence, migration.

Fails on the code before this change: an epoch of shard 1 was taken for the
already stored epoch of shard 0 ("stored"), and a recomputation of one
shard's epoch (``DELETE FROM flags WHERE start_ns=?``) deleted the other
shard's flags of the same epoch.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cloud_tecc.analytics.release import Decoded
from cloud_tecc.output.collector import decode_result
from cloud_tecc.output.incident_rows import IncidentQuery
from cloud_tecc.output.incidents import SECOND, Debounce, Rules, State
from cloud_tecc.output.store import ResultStore
from cloud_tecc.output.tracking import track

T0 = 1_700_000_000 * SECOND
RULES = Rules(Debounce(open_after=1, within_s=60.0, quiet_s=5.0))
ALL = 2**63 - 1


def _rows(
    gateway: str, sensors: list[str], flags: int = 0, start: int = T0, deviates: bool | None = None
) -> Decoded:
    windows: list[dict[str, Any]] = []
    for s in sensors:
        w: dict[str, Any] = {"gateway": gateway, "sensor": s, "start_ns": start, "count": 100}
        w |= {"mean": 1.0, "std": 0.5, "min": 0.0, "max": 2.0}
        if deviates is not None:
            w["deviates_from_fleet"] = deviates
        windows.append(w)
    alerts = [
        {"gateway": gateway, "sensor": sensors[0], "ts_ns": start + i * SECOND // 10,
         "detector": "limit"}
        for i in range(flags)
    ]  # fmt: skip
    return Decoded(windows=windows, alerts=alerts, fleet=[])


def _store(store: ResultStore, shard: int, rows: Decoded, start: int = T0) -> bool:
    through = start + SECOND
    return store.store_epoch(
        start,
        SECOND,
        rows,
        start,
        lambda live: track(rows, through, live, RULES, max_flags=100),
        shard=shard,
    )


def _flags(store: ResultStore) -> list[tuple[str, int]]:
    return sorted((r["gateway"], r["ts_ns"]) for r in store.alerts(0, ALL, None, 1000, 0))


def test_one_epoch_of_two_shards_is_two_releases(tmp_path: Path) -> None:
    """Epoch T0 of shard 0 and of shard 1 are both stored, each with its flags and incident."""
    store = ResultStore(tmp_path / "r.db")
    assert store.submit(T0, 0, 1, {}, b"", shard=0) == "new"
    assert _store(store, 0, _rows("gw-a", ["temp"], flags=2))
    assert store.submit(T0, 0, 1, {}, b"", shard=1) == "new"  # not "stored": another shard
    assert store.submit(T0, 0, 2, {}, b"", shard=0) == "stored"
    assert _store(store, 1, _rows("gw-b", ["temp"], flags=3))
    assert {(w["gateway"], w["start_ns"]) for w in store.windows(None, None, 0)} == {
        ("gw-a", T0),
        ("gw-b", T0),
    }
    assert [(e["shard"], e["start_ns"]) for e in store.epochs()] == [(0, T0), (1, T0)]
    assert len(_flags(store)) == 5
    assert sorted(i["gateway"] for i in store.incidents(IncidentQuery())) == ["gw-a", "gw-b"]
    progress = store.shard_progress()
    assert [(p["shard"], p["last_epoch_ns"], p["through_ns"]) for p in progress] == [
        (0, T0, T0 + SECOND),
        (1, T0, T0 + SECOND),
    ]
    store.close()


def test_pending_shares_are_per_shard(tmp_path: Path) -> None:
    """Party 0's vector of shard 1 never completes shard 0's epoch."""
    store = ResultStore(tmp_path / "r.db")
    assert store.submit(T0, 0, 1, {"epoch_ns": T0}, b"a", shard=0) == "new"
    assert store.submit(T0, 1, 1, {"epoch_ns": T0}, b"b", shard=1) == "new"
    assert set(store.pending(T0, shard=0)) == {0}
    assert set(store.pending(T0, shard=1)) == {1}
    _store(store, 0, _rows("gw-a", ["temp"]))
    assert store.pending(T0, shard=0) == {}
    assert set(store.pending(T0, shard=1)) == {1}  # storing shard 0 keeps shard 1's
    store.close()


def test_re_release_is_idempotent(tmp_path: Path) -> None:
    """Storing the same (shard, epoch) again: same rows, no more flags, no more incidents."""
    store = ResultStore(tmp_path / "r.db")
    rows = _rows("gw-a", ["temp"], flags=4)
    assert _store(store, 1, rows)
    before = (_flags(store), store.incidents(IncidentQuery()), store.windows(None, None, 0))
    assert not _store(store, 1, rows)
    after = (_flags(store), store.incidents(IncidentQuery()), store.windows(None, None, 0))
    assert [len(before[0]), len(before[1])] == [4, 1]
    assert (after[0], after[1]) == (before[0], before[1])
    assert [w["count"] for w in after[2]] == [w["count"] for w in before[2]]
    store.close()


def test_recomputing_one_shard_keeps_the_other_shards_flags(tmp_path: Path) -> None:
    """Shard 1's epoch recomputed with other flags replaces shard 1's flags only."""
    store = ResultStore(tmp_path / "r.db")
    _store(store, 0, _rows("gw-a", ["temp"], flags=2))
    _store(store, 1, _rows("gw-b", ["temp"], flags=3))
    _store(store, 1, _rows("gw-b", ["temp"], flags=1))  # a recomputation with fewer flags
    assert [g for g, _ in _flags(store)] == ["gw-a", "gw-a", "gw-b"]
    store.close()


def test_a_shard_ahead_does_not_close_another_shards_incident(tmp_path: Path) -> None:
    """Shard 0 far ahead (past quiet_s) leaves shard 1's open incident open: each shard's
    epochs move only its own incidents (its streams), as one shard holding all would."""
    store = ResultStore(tmp_path / "r.db")
    _store(store, 1, _rows("gw-b", ["temp"], flags=1))
    later = T0 + 60 * SECOND
    _store(store, 0, _rows("gw-a", ["temp"], start=later), start=later)
    (inc,) = store.incidents(IncidentQuery())
    assert (inc["gateway"], inc["state"]) == ("gw-b", State.OPEN.value)
    _store(store, 1, _rows("gw-b", ["temp"], start=later), start=later)
    assert store.incidents(IncidentQuery())[0]["state"] == State.CLOSED.value
    store.close()


def test_a_fleet_class_in_two_shards_is_refused(tmp_path: Path) -> None:
    """A class in the layouts of two shards of one epoch: no fleet row kept, no deviation."""
    store = ResultStore(tmp_path / "r.db")
    assert store.claim_fleet(0, T0, {"motor": [("gw-a", "motor1")]}) == ()
    rows = _rows("gw-a", ["motor1"], deviates=True)
    rows.fleet.append({"class": "motor", "start_ns": T0, "count": 100, "mean": 1.0, "std": 0.1})
    _store(store, 0, rows)
    assert [f["class"] for f in store.fleet(None, 0, ALL, 10)] == ["motor"]
    assert store.claim_fleet(0, T0, {"motor": [("gw-a", "motor1")]}) == ()  # re-release
    assert store.claim_fleet(1, T0, {"motor": [("gw-b", "motor2")], "pump": []}) == ("motor",)
    assert store.fleet(None, 0, ALL, 10) == []
    assert [w["deviates"] for w in store.windows(None, None, 0)] == [None]
    assert store.claim_fleet(1, T0 + SECOND, {"motor": [("gw-b", "motor2")]}) == ()  # next epoch
    store.close()


#: The results.db schema of the release before shards (copied from it).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    gateway TEXT NOT NULL, sensor TEXT NOT NULL, start_ns INTEGER NOT NULL,
    window_ns INTEGER NOT NULL, count INTEGER NOT NULL, mean REAL, std REAL, min REAL,
    max REAL, deviates INTEGER, stored_ns INTEGER NOT NULL,
    PRIMARY KEY (gateway, sensor, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, sensor TEXT NOT NULL,
    ts_ns INTEGER NOT NULL, detector TEXT NOT NULL, start_ns INTEGER NOT NULL,
    incident INTEGER, stored_ns INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS flags_ts ON flags (ts_ns);
CREATE INDEX IF NOT EXISTS flags_epoch ON flags (start_ns);
CREATE INDEX IF NOT EXISTS flags_incident ON flags (incident);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, sensor TEXT NOT NULL,
    detector TEXT NOT NULL, state TEXT NOT NULL, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, flags INTEGER NOT NULL, doc TEXT NOT NULL,
    updated_ns INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS incidents_end ON incidents (end_ns);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state);
CREATE TABLE IF NOT EXISTS submissions (
    epoch_ns INTEGER NOT NULL, party INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (epoch_ns, party)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fleet (
    class TEXT NOT NULL, start_ns INTEGER NOT NULL, count INTEGER NOT NULL,
    mean REAL, std REAL, PRIMARY KEY (class, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    start_ns INTEGER PRIMARY KEY, window_ns INTEGER NOT NULL, stored_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    epoch_ns INTEGER NOT NULL, party INTEGER NOT NULL, layout TEXT NOT NULL,
    vector BLOB NOT NULL, PRIMARY KEY (epoch_ns, party));
"""


def test_migration_of_a_results_db_before_shards(tmp_path: Path) -> None:
    """Every old row becomes shard 0's; a pending share survives; new shards store beside it."""
    path = tmp_path / "r.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO epochs VALUES (?, ?, ?)", (T0, SECOND, T0))
    db.execute(
        "INSERT INTO windows VALUES ('gw-a','temp',?,?,100,1.0,0.5,0.0,2.0,NULL,?)",
        (T0, SECOND, T0),
    )
    db.execute("INSERT INTO flags (gateway, sensor, ts_ns, detector, start_ns, stored_ns) "
               "VALUES ('gw-a','temp',?,'limit',?,?)", (T0 + 1, T0, T0))  # fmt: skip
    db.execute("INSERT INTO submissions VALUES (?, 0, 7)", (T0 + SECOND,))
    db.execute("INSERT INTO pending VALUES (?, 0, '{}', x'01')", (T0 + SECOND,))
    db.execute("INSERT INTO fleet VALUES ('motor', ?, 100, 1.0, 0.1)", (T0,))
    db.commit()
    db.close()
    store = ResultStore(path)
    assert [(e["shard"], e["start_ns"]) for e in store.epochs()] == [(0, T0)]
    assert [(p["shard"], p["last_epoch_ns"]) for p in store.shard_progress()] == [(0, T0)]
    assert store.submit(T0, 1, 9, {}, b"") == "stored"  # shard 0 is the old deployment
    assert store.submit(T0 + SECOND, 0, 7, {}, b"") == "stale"  # its seq kept
    assert store.pending(T0 + SECOND) == {0: ({}, b"\x01")}
    assert [f["class"] for f in store.fleet(None, 0, ALL, 10)] == ["motor"]
    assert store.submit(T0, 0, 1, {}, b"", shard=1) == "new"
    _store(store, 1, _rows("gw-b", ["temp"], flags=1))
    _store(store, 0, _rows("gw-a", ["temp"]))  # shard 0 recomputed without flags
    assert [g for g, _ in _flags(store)] == ["gw-b"]
    store.close()
    cols = sqlite3.connect(path).execute("SELECT name FROM pragma_table_info('flags')")
    assert "shard" in [c[0] for c in cols]
    again = ResultStore(path)  # reopening does not migrate twice
    assert [(e["shard"], e["start_ns"]) for e in again.epochs()] == [(0, T0), (1, T0)]
    assert [(p["shard"], p["through_ns"]) for p in again.shard_progress()] == [
        (0, T0 + SECOND),
        (1, T0 + SECOND),
    ]
    again.close()


def test_result_messages_carry_the_shard() -> None:
    """``shard`` is typed: absent is shard 0 (an older party); out of range or a bool refused."""
    layout = (
        b'{"epoch_ns": 0, "window_ns": 1, "frac_bits": 16, "flag_lane_bits": 4, "parties": 2, '
        b'"windows": [], "alerts": [], "fleet": [], "fleet_dev": []}'
    )
    base = b'{"party": 1, "seq": 5, "layout": ' + layout + b', "vector": "AAAAAAAAAAA="'
    assert decode_result(base + b"}").shard == 0
    msg = decode_result(base + b', "shard": 63}')
    assert (msg.shard, msg.seq, msg.shares()) == (63, 5, bytes(8))
    for bad in (b"64", b"-1", b"true", b'"1"'):
        with pytest.raises(ValueError, match=r"\$\.shard"):
            decode_result(base + b', "shard": ' + bad + b"}")
    with pytest.raises(ValueError, match=r"\$\.seq"):
        decode_result(b'{"seq": true, "layout": {}, "vector": ""}')
