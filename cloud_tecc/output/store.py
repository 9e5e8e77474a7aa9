"""SQLite storage of released results (WAL), with upserts so recomputation is idempotent.

Pending result shares (one party's vector while the other's is missing) are
kept durably too, so a restart of the output service loses nothing a party
was told was received.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any, Final

from cloud_tecc.analytics.release import Decoded

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS windows (
    gateway TEXT NOT NULL, sensor TEXT NOT NULL, start_ns INTEGER NOT NULL,
    window_ns INTEGER NOT NULL, count INTEGER NOT NULL, mean REAL, std REAL, min REAL,
    max REAL, deviates INTEGER, stored_ns INTEGER NOT NULL,
    PRIMARY KEY (gateway, sensor, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    gateway TEXT NOT NULL, sensor TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    detector TEXT NOT NULL, start_ns INTEGER NOT NULL,
    PRIMARY KEY (gateway, sensor, ts_ns, detector)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts_ns);
CREATE TABLE IF NOT EXISTS fleet (
    class TEXT NOT NULL, start_ns INTEGER NOT NULL, count INTEGER NOT NULL,
    mean REAL, std REAL, PRIMARY KEY (class, start_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    start_ns INTEGER PRIMARY KEY, window_ns INTEGER NOT NULL, stored_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    epoch_ns INTEGER NOT NULL, party INTEGER NOT NULL, layout TEXT NOT NULL,
    vector BLOB NOT NULL, PRIMARY KEY (epoch_ns, party));
"""


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


class ResultStore:
    """Released rows and pending shares."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def put_pending(self, epoch_ns: int, party: int, layout: dict[str, Any], vector: bytes) -> None:
        """Store (replace) one party's share vector of an epoch."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending VALUES (?,?,?,?)",
                (epoch_ns, party, json.dumps(layout, sort_keys=True), vector),
            )

    def pending(self, epoch_ns: int) -> dict[int, tuple[dict[str, Any], bytes]]:
        """All parties' pending shares of an epoch."""
        with self._lock:
            rows = self._db.execute(
                "SELECT party, layout, vector FROM pending WHERE epoch_ns=?", (epoch_ns,)
            ).fetchall()
        return {int(p): (json.loads(lay), bytes(vec)) for p, lay, vec in rows}

    def store_epoch(self, epoch_ns: int, window_ns: int, rows: Decoded, now_ns: int) -> None:
        """Upsert the released rows of an epoch and drop its pending shares."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
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
                            None
                            if "deviates_from_fleet" not in w
                            else int(w["deviates_from_fleet"]),
                            now_ns,
                        )
                        for w in rows.windows
                    ],
                )
                cur.execute("DELETE FROM alerts WHERE start_ns=?", (epoch_ns,))
                cur.executemany(
                    "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?)",
                    [
                        (a["gateway"], a["sensor"], a["ts_ns"], a["detector"], epoch_ns)
                        for a in rows.alerts
                    ],
                )
                cur.executemany(
                    "INSERT OR REPLACE INTO fleet VALUES (?,?,?,?,?)",
                    [
                        (
                            f["class"],
                            f["start_ns"],
                            f["count"],
                            _num(f.get("mean")),
                            _num(f.get("std")),
                        )
                        for f in rows.fleet
                    ],
                )
                cur.execute(
                    "INSERT OR REPLACE INTO epochs VALUES (?,?,?)", (epoch_ns, window_ns, now_ns)
                )
                cur.execute("DELETE FROM pending WHERE epoch_ns=?", (epoch_ns,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def windows(
        self, sensor: str | None, gateway: str | None, since_ns: int
    ) -> list[dict[str, Any]]:
        """Window rows, oldest first."""
        sql = "SELECT * FROM windows WHERE start_ns >= ?"
        args: list[Any] = [since_ns]
        if sensor:
            sql += " AND sensor = ?"
            args.append(sensor)
        if gateway:
            sql += " AND gateway = ?"
            args.append(gateway)
        return self._query(sql + " ORDER BY start_ns, gateway, sensor", tuple(args))

    def alerts(self, since_ns: int) -> list[dict[str, Any]]:
        """Alert rows, oldest first."""
        return self._query(
            "SELECT gateway, sensor, ts_ns, detector FROM alerts WHERE ts_ns >= ? "
            "ORDER BY ts_ns, gateway, sensor, detector",
            (since_ns,),
        )

    def sensors(self) -> list[dict[str, Any]]:
        """Known (gateway, sensor) pairs with window counts."""
        return self._query(
            "SELECT gateway, sensor, COUNT(*) AS windows, MAX(start_ns) AS last_start_ns "
            "FROM windows GROUP BY gateway, sensor ORDER BY gateway, sensor",
            (),
        )

    def fleet(self, cls: str | None, since_ns: int) -> list[dict[str, Any]]:
        """Fleet rows, oldest first."""
        if cls:
            return self._query(
                "SELECT * FROM fleet WHERE class=? AND start_ns >= ? ORDER BY start_ns",
                (cls, since_ns),
            )
        return self._query(
            "SELECT * FROM fleet WHERE start_ns >= ? ORDER BY start_ns, class", (since_ns,)
        )

    def change_marker(self) -> int:
        """A number that changes whenever a new epoch of results is stored."""
        rows = self._query("SELECT COALESCE(MAX(stored_ns), 0) AS m, COUNT(*) AS n FROM epochs", ())
        return int(rows[0]["m"]) + int(rows[0]["n"])

    def epochs(self) -> list[dict[str, Any]]:
        """Stored epochs with the time their results were stored."""
        return self._query("SELECT * FROM epochs ORDER BY start_ns", ())
