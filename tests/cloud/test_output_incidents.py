"""Incident tracker: one row per transition, then the epoch feeder and the SQLite store."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_tecc.analytics.release import Decoded
from cloud_tecc.output.incident_rows import IncidentQuery
from cloud_tecc.output.incidents import (
    SECOND,
    TRANSITIONS,
    Debounce,
    Event,
    Incident,
    IncidentError,
    Rules,
    State,
    WindowStats,
    on_ack,
    on_attestation,
    on_flag,
    on_progress,
)
from cloud_tecc.output.store import ResultStore
from cloud_tecc.output.tracking import track

T0 = 1_700_000_000 * SECOND
KEY = ("gw", "temp", "zscore")
W = WindowStats(T0, 100, 1.0, 0.5, 0.0, 3.0)
RULE = Debounce(open_after=2, within_s=10.0, quiet_s=30.0)


def _inc(state: State, **kw: Any) -> Incident:
    return Incident(*KEY, state=state, start_ns=T0, end_ns=T0, flags=1, **kw)


def _flag(inc: Incident | None, ts: int, rule: Debounce = RULE, n: int = 1) -> Incident:
    return on_flag(inc, key=KEY, ts_ns=ts, window=W, window_flags=n, rule=rule)


def _attest(inc: Incident, suspending: int) -> Incident | None:
    return on_attestation(inc, gateway="gw", suspending=suspending, now_ns=T0 + SECOND)


# (state, event, how to cause it, expected state or None for dropped)
ROWS = [
    (State.PENDING, Event.FLAG, lambda i: _flag(i, T0 + 20 * SECOND), State.PENDING),
    (State.PENDING, Event.DEBOUNCED, lambda i: _flag(i, T0 + 5 * SECOND), State.OPEN),
    (State.PENDING, Event.QUIET, lambda i: on_progress(i, T0 + 31 * SECOND, RULE), None),
    (State.OPEN, Event.FLAG, lambda i: _flag(i, T0 + SECOND), State.OPEN),
    (State.OPEN, Event.QUIET, lambda i: on_progress(i, T0 + 30 * SECOND, RULE), State.CLOSED),
    (State.OPEN, Event.ACK, lambda i: on_ack(i, "op", T0), State.ACKNOWLEDGED),
    (State.ACKNOWLEDGED, Event.FLAG, lambda i: _flag(i, T0 + SECOND), State.ACKNOWLEDGED),
    (
        State.ACKNOWLEDGED,
        Event.QUIET,
        lambda i: on_progress(i, T0 + 60 * SECOND, RULE),
        State.CLOSED,
    ),
    (State.ACKNOWLEDGED, Event.ACK, lambda i: on_ack(i, "op2", T0), State.ACKNOWLEDGED),
    (State.CLOSED, Event.ACK, lambda i: on_ack(i, "op", T0), State.CLOSED),
    (State.OPEN, Event.SUSPENDED, lambda i: _attest(i, 2), State.OPEN),
    (State.ACKNOWLEDGED, Event.SUSPENDED, lambda i: _attest(i, 2), State.ACKNOWLEDGED),
    (State.OPEN, Event.REINSTATED, lambda i: _attest(i, 0), State.CLOSED),
    (State.ACKNOWLEDGED, Event.REINSTATED, lambda i: _attest(i, 0), State.CLOSED),
]


@pytest.mark.parametrize(("state", "event", "cause", "expected"), ROWS)
def test_transition(state: State, event: Event, cause: Any, expected: State | None) -> None:
    """Each row of the transition table, caused by the public functions."""
    start = _inc(state, recent_ns=(T0,) if state is State.PENDING else ())
    if state is State.ACKNOWLEDGED:
        start = _inc(state, acknowledged_by="first")
    assert TRANSITIONS[(state, event)] == expected
    after = cause(start)
    assert (None if after is None else after.state) == expected


def test_table_covers_every_row_and_refuses_the_rest() -> None:
    """The tests cover the whole table; an event a state does not accept raises."""
    assert {(s, e) for s, e, _, _ in ROWS} == set(TRANSITIONS)
    with pytest.raises(IncidentError, match="pending incident does not accept ack"):
        on_ack(_inc(State.PENDING), "op", T0)


def test_debounce_m_of_span_and_first_ack_stands() -> None:
    """Two flags 20 s apart stay pending (span 10 s); the episode starts at its first flag."""
    a = _flag(None, T0)
    b = _flag(a, T0 + 20 * SECOND)
    assert (a.state, b.state, b.recent_ns) == (State.PENDING, State.PENDING, (T0 + 20 * SECOND,))
    c = _flag(b, T0 + 25 * SECOND)
    assert (c.state, c.start_ns, c.end_ns, c.flags) == (
        State.OPEN,
        T0,
        T0 + 25 * SECOND,
        3,
    )
    acked = on_ack(c, "alice", T0)
    assert on_ack(acked, "bob", T0 + 1).acknowledged_by == "alice"


def _epoch(alerts: list[tuple[str, str, int, str]], count: int = 100) -> Decoded:
    windows = [
        {"gateway": g, "sensor": s, "start_ns": T0, "count": count, "mean": 1.0, "max": 9.0}
        for g, s in {(a[0], a[1]) for a in alerts}
    ]
    return Decoded(
        windows=windows,
        alerts=[{"gateway": g, "sensor": s, "ts_ns": t, "detector": d} for g, s, t, d in alerts],
        fleet=[],
    )


def test_track_splits_after_quiet_and_caps_kept_flags() -> None:
    """A gap ≥ quiet_s closes the first incident; flags past the cap are only counted."""
    rules = Rules(Debounce(1, 60.0, 5.0))
    flags = [("gw", "temp", T0 + i * SECOND // 10, "zscore") for i in range(10)]
    flags += [("gw", "temp", T0 + 8 * SECOND, "zscore")] * 3  # duplicate timestamps
    out = track(_epoch(flags), T0 + 9 * SECOND, {}, rules, max_flags=4)
    assert [(i.state, i.flags) for i in out.incidents] == [(State.CLOSED, 10), (State.OPEN, 3)]
    kept = [f for f in out.flags if f.kept]
    assert [f.incident for f in kept] == [0] * 4 + [1] * 3
    assert len(out.flags) == 13


def test_track_is_generic_over_detector_names() -> None:
    """A detector the tracker never heard of gets the default rule; a listed one its own."""
    rules = Rules(Debounce(1, 60.0, 30.0), {"flatline": Debounce(3, 60.0, 30.0)})
    alerts = [("gw", "s", T0 + i * SECOND, d) for i in range(2) for d in ("flatline", "newdet")]
    out = track(_epoch(alerts), T0 + 2 * SECOND, {}, rules, max_flags=10)
    states = {i.detector: i.state for i in out.incidents}
    assert states == {"flatline": State.PENDING, "newdet": State.OPEN}


def test_store_keeps_duplicate_timestamps_and_bounds_flags(tmp_path: Path) -> None:
    """Three flags with one timestamp stay three rows; retention and the row cap prune.

    Fails on the code before this change: the alert table's primary key
    (gateway, sensor, ts_ns, detector) collapsed them into one.
    """
    store = ResultStore(tmp_path / "r.db")
    rules = Rules(Debounce(1, 60.0, 5.0))
    dup = [("gw", "temp", T0 + SECOND, "limit")] * 3
    assert store.store_epoch(
        T0,
        10 * SECOND,
        _epoch(dup),
        T0,
        lambda live: track(_epoch(dup), T0, live, rules, max_flags=9),
    )
    rows = store.alerts(0, 2**63 - 1, None, 100, 0)
    assert [r["ts_ns"] for r in rows] == [T0 + SECOND] * 3
    (inc,) = store.incidents(IncidentQuery())
    assert (inc["flags"], inc["state"], len(store.incident_flags(inc["id"], 10))) == (3, "open", 3)
    # storing the same epoch again neither doubles the flags nor the incident's count
    assert not store.store_epoch(T0, 10 * SECOND, _epoch(dup), T0 + 1, None)
    assert len(store.alerts(0, 2**63 - 1, None, 100, 0)) == 3
    assert store.incidents(IncidentQuery())[0]["flags"] == 3
    assert store.summary() == {
        "flags": 3,
        "incidents": {"open": 1, "acknowledged": 0, "closed": 0},
    }
    acked = store.acknowledge(inc["id"], "op", T0)
    assert acked is not None
    assert acked["acknowledged_by"] == "op"
    assert store.prune(0, max_flags=1) == 2  # the row cap keeps the newest one
    assert store.prune(T0 + 2 * SECOND, max_flags=10) == 1
    assert store.alerts(0, 2**63 - 1, None, 100, 0) == []
    store.close()


def test_store_refuses_replays_of_result_messages(tmp_path: Path) -> None:
    """An older or repeated seq is stale; any message for a stored epoch is a no-op.

    Fails on the code before this change: an old message replaced a newer one
    (``INSERT OR REPLACE`` into pending) and parked shares of stored epochs.
    """
    store = ResultStore(tmp_path / "r.db")
    assert store.submit(T0, 0, 5, {}, b"five") == "new"
    assert store.submit(T0, 0, 5, {}, b"again") == "stale"
    assert store.submit(T0, 0, 4, {}, b"four") == "stale"
    assert store.pending(T0) == {0: ({}, b"five")}  # an older message replaced nothing
    assert store.submit(T0, 0, 6, {}, b"six") == "new"
    assert store.pending(T0) == {0: ({}, b"six")}
    store.store_epoch(T0, 10 * SECOND, _epoch([]), T0, None)
    assert store.submit(T0, 1, 99, {}, b"") == "stored"
    store.close()


def test_store_moves_the_old_alert_table_into_flags(tmp_path: Path) -> None:
    """A results.db of the previous release keeps its flagged readings (as unlinked flags)."""
    import sqlite3  # noqa: PLC0415 - only this test builds an old database

    path = tmp_path / "r.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE alerts (gateway TEXT NOT NULL, sensor TEXT NOT NULL, ts_ns INTEGER NOT "
        "NULL, detector TEXT NOT NULL, start_ns INTEGER NOT NULL, "
        "PRIMARY KEY (gateway, sensor, ts_ns, detector)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO alerts VALUES ('gw', 's', ?, 'limit', ?)", (T0 + 1, T0))
    db.commit()
    db.close()
    store = ResultStore(path)
    assert store.alerts(0, 2**63 - 1, None, 10, 0) == [
        {"gateway": "gw", "sensor": "s", "ts_ns": T0 + 1, "detector": "limit", "incident": None}
    ]
    store.close()
    again = ResultStore(path)  # reopening does not migrate twice
    assert len(again.alerts(0, 2**63 - 1, None, 10, 0)) == 1
    again.close()


def test_a_failed_arrival_column_migration_leaves_no_zero_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between adding ``flags.stored_ns`` and filling it: the column is not left at 0.

    Fails on the code before this change: the ALTER TABLE and the UPDATE were
    separate autocommit statements, so the column stayed, all zeros, and the
    next prune would have deleted every old flag. Now the migration rolls back
    and the next open adds and fills it.
    """
    import sqlite3  # noqa: PLC0415 - only these tests build an old database

    path = tmp_path / "r.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE flags (id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, sensor TEXT NOT "
        "NULL, ts_ns INTEGER NOT NULL, detector TEXT NOT NULL, start_ns INTEGER NOT NULL, "
        "incident INTEGER)"
    )
    db.execute("INSERT INTO flags VALUES (1, 'gw', 's', ?, 'limit', ?, NULL)", (T0 + 1, T0))
    db.commit()
    db.close()

    def crash(sql: str) -> None:
        if sql.startswith("UPDATE flags SET stored_ns"):
            raise sqlite3.OperationalError("injected crash before the fill")

    class _Crashing:
        """A connection or cursor that fails at the fill statement, else delegates."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def execute(self, sql: str, *args: Any) -> Any:
            crash(sql)
            return self._inner.execute(sql, *args)

        def cursor(self) -> _Crashing:
            return _Crashing(self._inner.cursor())

    real = sqlite3.connect
    with monkeypatch.context() as m:
        m.setattr(sqlite3, "connect", lambda *a, **k: _Crashing(real(*a, **k)))
        with pytest.raises(sqlite3.OperationalError, match="injected"):
            ResultStore(path)
    db = sqlite3.connect(path)
    cols = [r[0] for r in db.execute("SELECT name FROM pragma_table_info('flags')")]
    db.close()
    assert "stored_ns" not in cols  # rolled back, not added and left at 0
    ResultStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT stored_ns FROM flags").fetchall() == [(T0 + 1,)]
    db.close()


@given(
    epochs=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b"]), st.integers(0, 9_999), st.sampled_from(["z", "r"])
            ),
            max_size=30,
        ),
        min_size=1,
        max_size=12,
    ),
    open_after=st.integers(1, 4),
    quiet_s=st.sampled_from([0.5, 2.0, 5.0]),
)
@settings(max_examples=150, deadline=None)
def test_incidents_partition_the_flags(
    epochs: list[list[tuple[str, int, str]]], open_after: int, quiet_s: float
) -> None:
    """Over random epochs of 10 s: every flag is in exactly one incident or a dropped pending one;
    incidents of one key never overlap and are separated by at least ``quiet_s``."""
    rules = Rules(Debounce(open_after, 3.0, quiet_s))
    live: dict[tuple[str, str, str], Incident] = {}
    done: list[Incident] = []
    dropped = total = 0
    for e, flags in enumerate(epochs):
        start = T0 + e * 10 * SECOND
        rows = [(g, "s", start + ms * SECOND // 1000, d) for g, ms, d in flags]
        out = track(_epoch(rows), start + 10 * SECOND, live, rules, max_flags=5)
        total += len(rows)
        dropped += sum(i.flags for i in out.dropped)
        live = {i.key: i for i in out.incidents if i.state is not State.CLOSED}
        done += [i for i in out.incidents if i.state is State.CLOSED]
        assert len(live) == sum(1 for i in out.incidents if i.state is not State.CLOSED)
        for f in out.flags:
            if f.incident >= 0:
                inc = out.incidents[f.incident]
                assert (inc.gateway, inc.detector) == (f.gateway, f.detector)
                assert inc.start_ns <= f.ts_ns <= inc.end_ns
    everything = done + list(live.values())
    assert sum(i.flags for i in everything) + dropped == total
    for key in {i.key for i in everything}:
        mine = sorted((i for i in everything if i.key == key), key=lambda i: i.start_ns)
        for a, b in itertools.pairwise(mine):
            assert a.state is State.CLOSED
            assert b.start_ns - a.end_ns >= int(quiet_s * SECOND)


def test_retention_prunes_by_arrival_not_by_event_time(tmp_path: Path) -> None:
    """A backfilled recording's flags and incidents survive the next retention sweep.

    Fails on the code before this change: ``prune`` compared the flags' event
    timestamps (2013 here) with the wall clock minus ``retention_s``, so every
    flag and closed incident of a history replay was deleted at once.
    """
    store = ResultStore(tmp_path / "r.db")
    old = 1_383_400_000 * SECOND  # November 2013
    now = T0  # the wall clock when the backfill is analysed
    rules = Rules(Debounce(1, 60.0, 5.0))
    flags = [("gw", "temp", old + i * SECOND, "limit") for i in range(3)]
    store.store_epoch(
        old,
        10 * SECOND,
        _epoch(flags),
        now,
        lambda live: track(_epoch(flags), old + 60 * SECOND, live, rules, max_flags=9),
    )
    (inc,) = store.incidents(IncidentQuery())
    assert inc["state"] == "closed"
    week = 7 * 86_400 * SECOND
    assert store.prune(now + 60 * SECOND - week, max_flags=100) == 0  # a sweep a minute later
    assert len(store.alerts(0, 2**63 - 1, None, 100, 0)) == 3
    assert len(store.incidents(IncidentQuery())) == 1
    # once they have been stored for longer than the retention, they go
    assert store.prune(now + SECOND, max_flags=100) == 4
    assert store.alerts(0, 2**63 - 1, None, 100, 0) == []
    assert store.incidents(IncidentQuery()) == []
    store.close()


def _mofn_epoch(start: int, idx: list[int], evaluated: int = 10) -> Decoded:
    """One epoch of 10 evaluated readings 0.1 s apart; flags at positions ``idx``."""
    alerts = [
        {
            "gateway": "gw",
            "sensor": "temp",
            "ts_ns": start + i * SECOND // 10,
            "detector": "zscore",
            "index": i,
        }
        for i in idx
    ]
    w = [{"gateway": "gw", "sensor": "temp", "start_ns": start, "count": evaluated}]
    return Decoded(w, alerts, [], {KEY: evaluated})


def test_m_of_n_counts_evaluated_readings_across_epochs(tmp_path: Path) -> None:
    """open_after 3 of_readings 10: opens only once 3 of the last 10 evaluated readings
    are flagged, counting readings (also of epochs without a flag), not seconds.

    Fails on the code before this change: there was no of_readings rule, and the
    time rule (3 flags within within_s) opened at the third flag whatever lay between.
    """
    rule = Rules(Debounce(open_after=3, within_s=60.0, quiet_s=30.0, of_readings=10))
    store = ResultStore(tmp_path / "r.db")
    epochs = [
        _mofn_epoch(T0, [0, 5]),  # two flags 5 readings apart: pending
        _mofn_epoch(T0 + SECOND, []),  # 10 quiet readings
        _mofn_epoch(T0 + 2 * SECOND, [3]),  # reading 23, 18 after the 2nd flag: pending
        _mofn_epoch(T0 + 3 * SECOND, [0, 2]),  # readings 30, 32 with 23: 3 of 10: open
    ]
    states: list[str | None] = []
    for k, rows in enumerate(epochs):
        through = T0 + (k + 1) * SECOND

        def tracker(live: dict[Any, Incident], r: Decoded = rows, t: int = through) -> Any:
            return track(r, t, live, rule, max_flags=100)

        store.store_epoch(T0 + k * SECOND, SECOND, rows, through, tracker)
        shown = store.incidents(IncidentQuery())
        states.append(shown[0]["state"] if shown else None)
    assert states == [None, None, None, "open"]
    (inc,) = store.incidents(IncidentQuery())
    assert inc["flags"] == 5  # the episode (no quiet_s gap) counts its pending flags too
    store.close()


def test_m_of_n_rule_is_checked() -> None:
    """of_readings below open_after is refused with the key and a correct example."""
    with pytest.raises(IncidentError, match="of_readings"):
        Debounce(open_after=5, of_readings=3)
