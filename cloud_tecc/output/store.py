"""SQLite storage of released results (WAL), with upserts so recomputation is idempotent.

Pending result shares (one party's vector while the other's is missing) are
kept durably too, so a restart of the output service loses nothing a party
was told was received.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from cloud_tecc.analytics.release import Decoded
from cloud_tecc.output import fleet_claims, migrate, outbox
from cloud_tecc.output.incident_rows import (
    ATTESTATION_SHARD,
    IncidentQuery,
    get_incident,
    incident_json,
    live_incidents,
    put_incident,
    query_incidents,
    write_tracked,
)
from cloud_tecc.output.incidents import Incident, State, on_ack
from cloud_tecc.output.store_reads import StoreReads
from cloud_tecc.output.tracking import Key, Tracked

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS windows (
    gateway TEXT NOT NULL, sensor TEXT NOT NULL, start_ns INTEGER NOT NULL,
    window_ns INTEGER NOT NULL, count INTEGER NOT NULL, mean REAL, std REAL, min REAL,
    max REAL, deviates INTEGER, stored_ns INTEGER NOT NULL,
    PRIMARY KEY (gateway, sensor, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, sensor TEXT NOT NULL,
    ts_ns INTEGER NOT NULL, detector TEXT NOT NULL, start_ns INTEGER NOT NULL,
    incident INTEGER, stored_ns INTEGER NOT NULL DEFAULT 0, shard INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS flags_ts ON flags (ts_ns);
CREATE INDEX IF NOT EXISTS flags_epoch ON flags (start_ns);
CREATE INDEX IF NOT EXISTS flags_incident ON flags (incident);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, sensor TEXT NOT NULL,
    detector TEXT NOT NULL, state TEXT NOT NULL, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, flags INTEGER NOT NULL, doc TEXT NOT NULL,
    updated_ns INTEGER NOT NULL DEFAULT 0, shard INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS incidents_end ON incidents (end_ns);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state);
CREATE TABLE IF NOT EXISTS submissions (
    shard INTEGER NOT NULL DEFAULT 0, epoch_ns INTEGER NOT NULL, party INTEGER NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (shard, epoch_ns, party)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fleet (
    class TEXT NOT NULL, start_ns INTEGER NOT NULL, count INTEGER NOT NULL,
    mean REAL, std REAL, shard INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (class, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    shard INTEGER NOT NULL DEFAULT 0, start_ns INTEGER NOT NULL, window_ns INTEGER NOT NULL,
    stored_ns INTEGER NOT NULL, PRIMARY KEY (shard, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    shard INTEGER NOT NULL DEFAULT 0, epoch_ns INTEGER NOT NULL, party INTEGER NOT NULL,
    layout TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (shard, epoch_ns, party));
CREATE TABLE IF NOT EXISTS shards (
    shard INTEGER PRIMARY KEY, last_epoch_ns INTEGER NOT NULL, through_ns INTEGER NOT NULL,
    stored_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_claims (
    start_ns INTEGER NOT NULL, class TEXT NOT NULL, shard INTEGER NOT NULL,
    members TEXT NOT NULL, PRIMARY KEY (start_ns, class, shard)) WITHOUT ROWID;
"""


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _alert_set(epoch_ns: int, rows: Decoded) -> list[tuple[Any, ...]]:
    return sorted(
        (a["gateway"], a["sensor"], int(a["ts_ns"]), a["detector"], epoch_ns) for a in rows.alerts
    )


def _flag_set(cur: sqlite3.Cursor, shard: int, epoch_ns: int) -> list[tuple[Any, ...]]:
    rows = cur.execute(
        "SELECT gateway, sensor, ts_ns, detector, start_ns FROM flags WHERE shard=? AND start_ns=?",
        (shard, epoch_ns),
    ).fetchall()
    return sorted(tuple(r) for r in rows)


class ResultStore(StoreReads):
    """Released rows and pending shares (the read queries: :class:`StoreReads`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        migrate.add_arrival_columns(self._db)
        migrate.add_shard_columns(self._db)
        self._db.executescript(_SCHEMA)
        self._db.execute("CREATE INDEX IF NOT EXISTS flags_stored ON flags (stored_ns)")
        outbox.create(self._db)
        migrate.migrate_alerts(self._db)
        migrate.fill_shard_progress(self._db)
        self._lock = threading.Lock()
        self._changes = 0

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def pending(self, epoch_ns: int, shard: int = 0) -> dict[int, tuple[dict[str, Any], bytes]]:
        """All parties' pending shares of a shard's epoch."""
        with self._lock:
            rows = self._db.execute(
                "SELECT party, layout, vector FROM pending WHERE shard=? AND epoch_ns=?",
                (shard, epoch_ns),
            ).fetchall()
        return {int(p): (json.loads(lay), bytes(vec)) for p, lay, vec in rows}

    def store_epoch(
        self,
        epoch_ns: int,
        window_ns: int,
        rows: Decoded,
        now_ns: int,
        tracker: Callable[[dict[Key, Incident]], Tracked] | None = None,
        *,
        shard: int = 0,
    ) -> bool:
        """Upsert the released rows of a shard's epoch, drop its pending shares; True if new.

        Results are keyed by (shard, epoch): the same epoch of two shards is
        two releases. A new one's flags go through ``tracker`` (given the live
        incidents of this shard) and are stored with the incident they belong
        to; a recomputed one replaces its own rows and flags (never another
        shard's) but is not counted into incidents twice.
        """
        with self._lock:
            cur = self._db.cursor()
            with _immediate(cur):
                new = (
                    cur.execute(
                        "SELECT 1 FROM epochs WHERE shard=? AND start_ns=?", (shard, epoch_ns)
                    ).fetchone()
                    is None
                )
                self._put_rows(
                    cur, shard=shard, epoch_ns=epoch_ns, window_ns=window_ns, rows=rows,
                    now_ns=now_ns,
                )  # fmt: skip
                if new and tracker is not None:
                    live = live_incidents(cur, shard)
                    write_tracked(cur, epoch_ns, tracker(live), now_ns, shard)
                elif _flag_set(cur, shard, epoch_ns) != _alert_set(epoch_ns, rows):
                    # a recomputation that changed the flags: replace them, unlinked
                    cur.execute("DELETE FROM flags WHERE shard=? AND start_ns=?", (shard, epoch_ns))
                    cur.executemany(
                        "INSERT INTO flags (gateway, sensor, ts_ns, detector, start_ns, "
                        "stored_ns, shard) VALUES (?,?,?,?,?,?,?)",
                        [(*a, now_ns, shard) for a in _alert_set(epoch_ns, rows)],
                    )
                key = (shard, epoch_ns)
                cur.execute("DELETE FROM pending WHERE shard=? AND epoch_ns=?", key)
                cur.execute("DELETE FROM submissions WHERE shard=? AND epoch_ns=?", key)
        self._changes += 1
        return new

    def _put_rows(
        self,
        cur: sqlite3.Cursor,
        *,
        shard: int,
        epoch_ns: int,
        window_ns: int,
        rows: Decoded,
        now_ns: int,
    ) -> None:
        cur.executemany(
            "INSERT OR REPLACE INTO windows VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    w["gateway"],
                    w["sensor"],
                    w["start_ns"],
                    window_ns,
                    w["count"],
                    _num(w.get("mean")),
                    _num(w.get("std")),
                    _num(w.get("min")),
                    _num(w.get("max")),
                    None if "deviates_from_fleet" not in w else int(w["deviates_from_fleet"]),
                    now_ns,
                )
                for w in rows.windows
            ],
        )
        cur.executemany(
            "INSERT OR REPLACE INTO fleet (class, start_ns, count, mean, std, shard) "
            "VALUES (?,?,?,?,?,?)",
            [
                (
                    f["class"],
                    f["start_ns"],
                    f["count"],
                    _num(f.get("mean")),
                    _num(f.get("std")),
                    shard,
                )
                for f in rows.fleet
            ],
        )
        cur.execute(
            "INSERT OR REPLACE INTO epochs (shard, start_ns, window_ns, stored_ns) "
            "VALUES (?,?,?,?)",
            (shard, epoch_ns, window_ns, now_ns),
        )
        cur.execute(
            "INSERT INTO shards VALUES (?,?,?,?) ON CONFLICT (shard) DO UPDATE SET "
            "last_epoch_ns = MAX(last_epoch_ns, excluded.last_epoch_ns), "
            "through_ns = MAX(through_ns, excluded.through_ns), stored_ns = excluded.stored_ns",
            (shard, epoch_ns, epoch_ns + window_ns, now_ns),
        )

    def claim_fleet(
        self, shard: int, epoch_ns: int, members: Mapping[str, Sequence[tuple[str, str]]]
    ) -> tuple[str, ...]:
        """Record the fleet classes of a shard's epoch; those another shard holds too.

        See :func:`cloud_tecc.output.fleet_claims.claim` (one transaction).
        """
        if not members:
            return ()
        with self._lock:
            cur = self._db.cursor()
            with _immediate(cur):
                clash = fleet_claims.claim(cur, shard, epoch_ns, members)
        if clash:
            self._changes += 1
        return clash

    def submit(
        self,
        epoch_ns: int,
        party: int,
        seq: int,
        layout: dict[str, Any],
        vector: bytes,
        *,
        shard: int = 0,
    ) -> str:
        """Hold one party's share vector of a shard's epoch if its message is fresh.

        Answers ``new`` (held), ``stale`` (that party's message of this epoch with
        this or a newer seq is already held) or ``stored`` (the epoch is released).
        A replayed or older message can neither replace a newer one of the same
        (shard, epoch) (roll back) nor park shares of one already stored (block).

        The seq and the vector are written in one transaction: a seq recorded
        without its vector (a crash or a failed write between two commits) would
        answer the party's resend ``stale``, the party would count the message as
        delivered, and the epoch would never be reconstructed.
        """
        key = (shard, epoch_ns)
        with self._lock:
            cur = self._db.cursor()
            with _immediate(cur):
                if cur.execute("SELECT 1 FROM epochs WHERE shard=? AND start_ns=?", key).fetchone():
                    return "stored"
                row = cur.execute(
                    "SELECT seq FROM submissions WHERE shard=? AND epoch_ns=? AND party=?",
                    (*key, party),
                ).fetchone()
                if row is not None and int(row[0]) >= seq:
                    return "stale"
                cur.execute(
                    "INSERT OR REPLACE INTO submissions (shard, epoch_ns, party, seq) "
                    "VALUES (?,?,?,?)",
                    (*key, party, seq),
                )
                cur.execute(
                    "INSERT OR REPLACE INTO pending (shard, epoch_ns, party, layout, vector) "
                    "VALUES (?,?,?,?,?)",
                    (*key, party, json.dumps(layout, sort_keys=True), vector),
                )
            return "new"

    def prune(self, before_ns: int, max_flags: int) -> int:
        """Retention: drop flags and closed incidents that *arrived* before ``before_ns``.

        Arrival (the wall-clock time a flag was stored, or an incident last
        written) and not event time: a backfilled recording of 2013 is kept
        ``retention_s`` after it was analysed like live data, instead of being
        pruned by the next sweep. The row cap bounds storage whatever the times.
        """
        with self._lock:
            cur = self._db.cursor()
            with _immediate(cur):
                n = cur.execute("DELETE FROM flags WHERE stored_ns < ?", (before_ns,)).rowcount
                n += cur.execute(
                    "DELETE FROM incidents WHERE state='closed' AND updated_ns < ?", (before_ns,)
                ).rowcount
                n += cur.execute(
                    "DELETE FROM flags WHERE id <= (SELECT id FROM flags ORDER BY id DESC "
                    "LIMIT 1 OFFSET ?)",
                    (max_flags,),
                ).rowcount
                outbox.prune(cur, before_ns)  # delivery history: not counted as result rows
        return n

    def acknowledge(self, incident_id: int, operator: str, now_ns: int) -> dict[str, Any] | None:
        """Acknowledge an incident; its API row, or None if unknown. IncidentError if pending."""
        with self._lock:
            inc = get_incident(self._db.cursor(), incident_id)
            if inc is None or inc.state is State.PENDING:
                return None
            acked = on_ack(inc, operator, now_ns)
            cur = self._db.cursor()
            with _immediate(cur):
                put_incident(cur, acked, now_ns)
        self._changes += 1
        return incident_json(acked)

    def attestation_incidents(
        self, step: Callable[[dict[str, Incident]], list[Incident]], now_ns: int
    ) -> list[dict[str, Any]]:
        """Apply ``step`` (live attestation incidents by gateway → changed ones) atomically.

        The incidents and their delivery transitions are written in one
        transaction; the API rows written are returned.
        """
        with self._lock:
            cur = self._db.cursor()
            with _immediate(cur):
                live = live_incidents(cur, ATTESTATION_SHARD)
                changed = step({k[0]: v for k, v in live.items()})
                ids = [put_incident(cur, i, now_ns, ATTESTATION_SHARD) for i in changed]
        if changed:
            self._changes += 1
        return [incident_json(replace(i, id=n)) for i, n in zip(changed, ids, strict=True)]

    def incidents(self, q: IncidentQuery) -> list[dict[str, Any]]:
        """Incidents (never pending ones): open and acknowledged first, then newest first."""
        with self._lock:
            return [incident_json(i) for i in query_incidents(self._db.cursor(), q)]

    def summary(self) -> dict[str, Any]:
        """Counts for a status line: flagged readings stored, incidents by state."""
        flags = self._query("SELECT COUNT(*) AS n FROM flags", ())[0]["n"]
        rows = self._query(
            "SELECT state, COUNT(*) AS n FROM incidents WHERE state != 'pending' GROUP BY state", ()
        )
        by_state = {"open": 0, "acknowledged": 0, "closed": 0} | {r["state"]: r["n"] for r in rows}
        return {"flags": int(flags), "incidents": by_state}

    def incident_flags(self, incident_id: int, limit: int) -> list[dict[str, Any]]:
        """The kept flagged readings of one incident (drill-down), oldest first."""
        return self._query(
            "SELECT gateway, sensor, ts_ns, detector FROM flags WHERE incident=? "
            "ORDER BY ts_ns, id LIMIT ?",
            (incident_id, limit),
        )

    def change_marker(self) -> int:
        """A number that changes whenever results or incidents change (in this process)."""
        return self._changes


@contextlib.contextmanager
def _immediate(cur: sqlite3.Cursor) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction on ``cur``: committed, or rolled back on any error."""
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
