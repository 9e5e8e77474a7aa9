"""Durable share storage of one party: SQLite in WAL mode.

``batches`` holds one row per accepted (gateway, seq) with the frame digest,
so a retry (same digest) is recognised as a duplicate and a different frame
under a used sequence number as a replay. ``segments`` holds this party's
share columns per sensor segment as little-endian uint64 blobs — uniformly
random bytes, never a value. ``stream_state`` keeps the secret-shared
detector state per stream, versioned by the epoch after which it holds, and
``epochs`` the epochs already computed. ``outbox`` holds result messages
(encrypted shares) committed with their epoch and not yet accepted by the
output service.

Writes go through one connection with ``synchronous=FULL`` by default: a row is
on disk when :meth:`ShareStore.insert_batches` returns, and only then does the
service acknowledge.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from cloud_tecc.analytics.plan import Int64Array, StreamState
from tecc_contract.ring import RingArray
from tecc_contract.scale import IDENTITY, Scale

#: One epoch as :meth:`ShareStore.commit_epochs` takes it: (end_ns, states, readings,
#: done_ns, result message or None).
CommittedEpoch = tuple[int, dict[tuple[str, str], StreamState], int, int, bytes | None]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL,
    received_ns INTEGER NOT NULL, count INTEGER NOT NULL,
    min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL, has_q INTEGER NOT NULL,
    PRIMARY KEY (gateway, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_max_ts ON batches (max_ts);
CREATE TABLE IF NOT EXISTS segments (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,
    sensor TEXT NOT NULL, ts BLOB NOT NULL, x BLOB NOT NULL, q BLOB,
    scale_exp INTEGER NOT NULL DEFAULT 0, scale_off REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, seq, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stream_state (
    gateway TEXT NOT NULL, sensor TEXT NOT NULL, epoch_ns INTEGER NOT NULL,
    centre BLOB NOT NULL, hist_x BLOB NOT NULL, hist_yy BLOB NOT NULL,
    scale_exp INTEGER NOT NULL DEFAULT 0, scale_off REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, sensor, epoch_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    epoch_ns INTEGER PRIMARY KEY, done_ns INTEGER NOT NULL, readings INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (epoch_ns INTEGER PRIMARY KEY, body BLOB NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One sensor segment of a batch as stored."""

    idx: int
    sensor: str
    ts: bytes
    x: bytes
    q: bytes | None
    scale: Scale = IDENTITY


@dataclass(frozen=True, slots=True)
class BatchRow:
    """An opened batch ready to persist (shares only)."""

    gateway: str
    seq: int
    digest: bytes
    received_ns: int
    count: int
    min_ts: int
    max_ts: int
    has_q: bool
    segments: tuple[SegmentRow, ...]


class InsertResult:
    """Outcome labels of :meth:`ShareStore.insert_batches`."""

    ACCEPTED: Final = "accepted"
    DUPLICATE: Final = "duplicate"
    REPLAY: Final = "replay"


@dataclass(frozen=True, slots=True, eq=False)
class StoredSegment:
    """A segment read back for an epoch."""

    gateway: str
    seq: int
    idx: int
    sensor: str
    ts: Int64Array
    x: RingArray
    q: RingArray | None
    scale: Scale = IDENTITY


def _ring(b: bytes) -> RingArray:
    return np.frombuffer(b, dtype="<u8").astype(np.uint64)


def _blob(a: RingArray) -> bytes:
    return np.ascontiguousarray(a, dtype="<u8").tobytes()


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the database in WAL mode with the schema in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.executescript(_SCHEMA)
    for table in ("segments", "stream_state"):  # stores written before the per-sensor scale
        cols = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for col, kind in (("scale_exp", "INTEGER"), ("scale_off", "REAL")):
            if col not in cols:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind} NOT NULL DEFAULT 0")
    return conn


class ShareStore:
    """All durable state of one party. Thread-safe through a lock per connection."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._w = connect(path, synchronous)
        self._r = connect(path, synchronous)
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()

    def close(self) -> None:
        """Close both connections."""
        self._w.close()
        self._r.close()

    def insert_batches(self, rows: Sequence[BatchRow]) -> list[str]:
        """Persist batches in one transaction; one outcome label per row."""
        out = []
        with self._wlock:
            cur = self._w.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    old = cur.execute(
                        "SELECT digest FROM batches WHERE gateway=? AND seq=?",
                        (row.gateway, row.seq),
                    ).fetchone()
                    if old is not None:
                        same = bytes(old[0]) == row.digest
                        out.append(InsertResult.DUPLICATE if same else InsertResult.REPLAY)
                        continue
                    cur.execute(
                        "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?)",
                        (
                            row.gateway,
                            row.seq,
                            row.digest,
                            row.received_ns,
                            row.count,
                            row.min_ts,
                            row.max_ts,
                            int(row.has_q),
                        ),
                    )
                    cur.executemany(
                        "INSERT INTO segments VALUES (?,?,?,?,?,?,?,?,?)",
                        [
                            (
                                row.gateway,
                                row.seq,
                                s.idx,
                                s.sensor,
                                s.ts,
                                s.x,
                                s.q,
                                s.scale.exponent,
                                s.scale.offset,
                            )
                            for s in row.segments
                        ],
                    )
                    out.append(InsertResult.ACCEPTED)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return out

    def batch_count(self) -> int:
        """Number of stored batches."""
        with self._rlock:
            return int(self._r.execute("SELECT COUNT(*) FROM batches").fetchone()[0])

    def has_batches(self, keys: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """The subset of ``keys`` that is missing here."""
        with self._rlock:
            missing = []
            for gw, seq in keys:
                hit = self._r.execute(
                    "SELECT 1 FROM batches WHERE gateway=? AND seq=?", (gw, seq)
                ).fetchone()
                if hit is None:
                    missing.append((gw, seq))
            return missing

    def batches_overlapping(self, start_ns: int, end_ns: int) -> list[tuple[str, int]]:
        """Keys of batches with a reading in ``[start_ns, end_ns)``, sorted."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT gateway, seq FROM batches WHERE max_ts >= ? AND min_ts < ? "
                "ORDER BY gateway, seq",
                (start_ns, end_ns),
            ).fetchall()
        return [(str(g), int(s)) for g, s in rows]

    def earliest_reading_after(self, watermark_ns: int) -> int | None:
        """Smallest timestamp bound of batches holding readings at or after the watermark."""
        with self._rlock:
            row = self._r.execute(
                "SELECT MIN(MAX(min_ts, ?)) FROM batches WHERE max_ts >= ?",
                (watermark_ns, watermark_ns),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def load_segments(self, keys: Sequence[tuple[str, int]]) -> list[StoredSegment]:
        """Segments of the given batches, in key then segment order."""
        out = []
        with self._rlock:
            for gw, seq in keys:
                rows = self._r.execute(
                    "SELECT idx, sensor, ts, x, q, scale_exp, scale_off FROM segments "
                    "WHERE gateway=? AND seq=? ORDER BY idx",
                    (gw, seq),
                ).fetchall()
                for idx, sensor, ts, x, q, exp, off in rows:
                    out.append(
                        StoredSegment(
                            gw,
                            seq,
                            int(idx),
                            str(sensor),
                            np.frombuffer(ts, dtype="<i8").astype(np.int64),
                            _ring(x),
                            None if q is None else _ring(q),
                            Scale(int(exp), float(off)),
                        )
                    )
        return out

    def readings_from(self, ts_ns: int) -> int:
        """Readings of the stored batches with a reading at or after ``ts_ns`` (the lag in
        readings behind the watermark; a batch straddling it counts whole)."""
        with self._rlock:
            row = self._r.execute(
                "SELECT COALESCE(SUM(count), 0) FROM batches WHERE max_ts >= ?", (ts_ns,)
            ).fetchone()
        return int(row[0])

    def watermark(self) -> int:
        """End of the last computed epoch (0 before the first)."""
        with self._rlock:
            row = self._r.execute("SELECT MAX(epoch_ns) FROM epochs").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def load_states(
        self, streams: Sequence[tuple[str, str]], before_ns: int
    ) -> dict[tuple[str, str], StreamState]:
        """Latest stream states recorded for epochs ending at or before ``before_ns``."""
        out = {}
        with self._rlock:
            for gw, sensor in streams:
                row = self._r.execute(
                    "SELECT centre, hist_x, hist_yy, scale_exp, scale_off FROM stream_state "
                    "WHERE gateway=? AND sensor=? AND epoch_ns<=? ORDER BY epoch_ns DESC LIMIT 1",
                    (gw, sensor, before_ns),
                ).fetchone()
                if row is not None:
                    scale = Scale(int(row[3]), float(row[4]))
                    out[(gw, sensor)] = StreamState(
                        _ring(row[0]), _ring(row[1]), _ring(row[2]), scale
                    )
        return out

    def commit_epoch(
        self,
        end_ns: int,
        states: dict[tuple[str, str], StreamState],
        readings: int,
        now_ns: int,
        result: bytes | None = None,
    ) -> None:
        """Record a computed epoch (ending at ``end_ns``), its states and its result message."""
        self.commit_epochs([(end_ns, states, readings, now_ns, result)])

    def commit_epochs(self, epochs: Sequence[CommittedEpoch]) -> None:
        """:meth:`commit_epoch` of each epoch in order, in one transaction (a takeover's replay)."""
        with self._wlock:
            cur = self._w.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for epoch in epochs:
                    _commit_one(cur, epoch)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def next_outgoing(self) -> tuple[int, bytes] | None:
        """The oldest result message not yet delivered."""
        with self._rlock:
            row = self._r.execute(
                "SELECT epoch_ns, body FROM outbox ORDER BY epoch_ns LIMIT 1"
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def delivered(self, epoch_ns: int, body: bytes) -> None:
        """Drop a delivered message (unless a recomputation replaced it meanwhile)."""
        with self._wlock:
            self._w.execute("DELETE FROM outbox WHERE epoch_ns=? AND body=?", (epoch_ns, body))

    def drop_released(self, released_ns: int) -> int:
        """Drop the result messages of epochs through ``released_ns`` (released meanwhile)."""
        with self._wlock:
            return self._w.execute(
                "DELETE FROM outbox WHERE epoch_ns <= ?", (released_ns,)
            ).rowcount

    def prune_batches(self, before_ns: int) -> int:
        """Delete stored shares of batches whose readings all precede ``before_ns``."""
        with self._wlock:
            cur = self._w.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "DELETE FROM segments WHERE (gateway, seq) IN "
                    "(SELECT gateway, seq FROM batches WHERE max_ts < ?)",
                    (before_ns,),
                )
                n = cur.execute("DELETE FROM batches WHERE max_ts < ?", (before_ns,)).rowcount
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return int(n)

    def rewind(self, watermark_ns: int) -> None:
        """Forget epochs computed after ``watermark_ns`` (the leader redoes them)."""
        with self._wlock:
            self._w.execute("DELETE FROM epochs WHERE epoch_ns > ?", (watermark_ns,))
            self._w.execute("DELETE FROM stream_state WHERE epoch_ns > ?", (watermark_ns,))


def _commit_one(cur: sqlite3.Cursor, epoch: CommittedEpoch) -> None:
    """One epoch's rows, inside the caller's transaction (see :meth:`ShareStore.commit_epoch`)."""
    end_ns, states, readings, now_ns, result = epoch
    cur.execute("DELETE FROM epochs WHERE epoch_ns >= ?", (end_ns,))
    cur.execute("DELETE FROM stream_state WHERE epoch_ns >= ?", (end_ns,))
    cur.executemany(
        "INSERT INTO stream_state VALUES (?,?,?,?,?,?,?,?)",
        [
            (
                gw,
                se,
                end_ns,
                _blob(s.centre),
                _blob(s.hist_x),
                _blob(s.hist_yy),
                s.scale.exponent,
                s.scale.offset,
            )
            for (gw, se), s in states.items()
        ],
    )
    prev = cur.execute(
        "SELECT COALESCE(MAX(epoch_ns), 0) FROM epochs WHERE epoch_ns < ?", (end_ns,)
    ).fetchone()[0]
    # Keep per stream the latest state at or before the previous watermark (a
    # rewind never goes further back) and everything newer.
    cur.execute(
        "DELETE FROM stream_state WHERE epoch_ns < (SELECT MAX(t.epoch_ns) FROM "
        "stream_state t WHERE t.gateway = stream_state.gateway AND "
        "t.sensor = stream_state.sensor AND t.epoch_ns <= ?)",
        (prev,),
    )
    cur.execute("DELETE FROM epochs WHERE epoch_ns < ?", (prev,))
    cur.execute("INSERT INTO epochs VALUES (?,?,?)", (end_ns, now_ns, readings))
    if result is not None:
        cur.execute("INSERT OR REPLACE INTO outbox VALUES (?,?)", (end_ns, result))
