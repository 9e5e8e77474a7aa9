"""Schema migrations of an existing ``results.db`` (each one transaction, run at open).

- arrival times (``flags.stored_ns``, ``incidents.updated_ns``), which
  retention prunes by: old rows get their event time;
- the old ``alerts`` table moves into ``flags``;
- shards: results are keyed by (shard, epoch). ``flags``, ``incidents`` and
  ``fleet`` gain a ``shard`` column (default 0); ``epochs``, ``submissions``
  and ``pending``, whose primary key gains the shard, are rebuilt with every
  old row in shard 0 — a deployment of one shard is shard 0 of 1; the
  per-shard progress (``shards``) is derived once from ``epochs``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final


def _rekey(table: str, create: str, old: str) -> tuple[str, ...]:
    return (
        f"ALTER TABLE {table} RENAME TO {table}_before_shards",
        create,
        f"INSERT INTO {table} (shard, {old}) SELECT 0, {old} FROM {table}_before_shards",  # noqa: S608 - constants
        f"DROP TABLE {table}_before_shards",
    )


#: Tables whose primary key gains ``shard``: table -> the statements that rebuild it.
_REKEYED: Final = {
    "epochs": _rekey(
        "epochs",
        "CREATE TABLE epochs (shard INTEGER NOT NULL DEFAULT 0, start_ns INTEGER NOT NULL, "
        "window_ns INTEGER NOT NULL, stored_ns INTEGER NOT NULL, "
        "PRIMARY KEY (shard, start_ns)) WITHOUT ROWID",
        "start_ns, window_ns, stored_ns",
    ),
    "submissions": _rekey(
        "submissions",
        "CREATE TABLE submissions (shard INTEGER NOT NULL DEFAULT 0, epoch_ns INTEGER NOT NULL, "
        "party INTEGER NOT NULL, seq INTEGER NOT NULL, "
        "PRIMARY KEY (shard, epoch_ns, party)) WITHOUT ROWID",
        "epoch_ns, party, seq",
    ),
    "pending": _rekey(
        "pending",
        "CREATE TABLE pending (shard INTEGER NOT NULL DEFAULT 0, epoch_ns INTEGER NOT NULL, "
        "party INTEGER NOT NULL, layout TEXT NOT NULL, vector BLOB NOT NULL, "
        "PRIMARY KEY (shard, epoch_ns, party))",
        "epoch_ns, party, layout, vector",
    ),
}
#: Tables that gain a plain ``shard`` column.
_TAGGED: Final = ("flags", "incidents", "fleet")


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM pragma_table_info(?)", (table,))]


def _atomic(db: sqlite3.Connection, statements: Sequence[str]) -> None:
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        for sql in statements:
            cur.execute(sql)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def add_arrival_columns(db: sqlite3.Connection) -> None:
    """A results.db of an older release: add the arrival times retention prunes by.

    Rows stored before have no arrival time; they get their event time (the
    old rule), so nothing changes for them. One transaction per column: a
    crash never leaves it at 0 (the next prune would take every old row for
    ancient and delete it).
    """
    migrations = (
        (
            "flags",
            "stored_ns",
            "ALTER TABLE flags ADD COLUMN stored_ns INTEGER NOT NULL DEFAULT 0",
            "UPDATE flags SET stored_ns = ts_ns",
        ),
        (
            "incidents",
            "updated_ns",
            "ALTER TABLE incidents ADD COLUMN updated_ns INTEGER NOT NULL DEFAULT 0",
            "UPDATE incidents SET updated_ns = end_ns",
        ),
    )
    for table, column, add, fill in migrations:
        cols = _columns(db, table)
        if cols and column not in cols:
            _atomic(db, (add, fill))


def add_shard_columns(db: sqlite3.Connection) -> None:
    """A results.db of the release before shards: every row becomes shard 0's."""
    for table in _TAGGED:
        cols = _columns(db, table)
        if cols and "shard" not in cols:
            _atomic(db, (f"ALTER TABLE {table} ADD COLUMN shard INTEGER NOT NULL DEFAULT 0",))
    for table, statements in _REKEYED.items():
        cols = _columns(db, table)
        if cols and "shard" not in cols:
            _atomic(db, statements)


def migrate_alerts(db: sqlite3.Connection) -> None:
    """A results.db of an older release: move its ``alerts`` rows into ``flags``."""
    old = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alerts'").fetchone()
    if old is None:
        return
    _atomic(
        db,
        (
            "INSERT INTO flags (gateway, sensor, ts_ns, detector, start_ns, stored_ns) "
            "SELECT gateway, sensor, ts_ns, detector, start_ns, ts_ns FROM alerts "
            "ORDER BY ts_ns",
            "DROP TABLE alerts",
        ),
    )


def fill_shard_progress(db: sqlite3.Connection) -> None:
    """A results.db without per-shard progress rows: derive them once from ``epochs``."""
    if db.execute("SELECT 1 FROM shards LIMIT 1").fetchone() is not None:
        return
    _atomic(
        db,
        (
            "INSERT INTO shards SELECT shard, MAX(start_ns), MAX(start_ns + window_ns), "
            "MAX(stored_ns) FROM epochs GROUP BY shard",
        ),
    )
