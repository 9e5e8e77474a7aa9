"""The read queries of the results store (what the JSON API lists), over its connection."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any


class StoreReads:
    """Read-only queries; the store holds ``_db`` and the ``_lock`` every access takes."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def windows(
        self,
        sensor: str | None,
        gateway: str | None,
        since_ns: int,
        until_ns: int = 2**63 - 1,
        limit: int = 1_000_000,
    ) -> list[dict[str, Any]]:
        """Window rows, oldest first."""
        sql = "SELECT * FROM windows WHERE start_ns >= ? AND start_ns < ?"
        args: list[Any] = [since_ns, until_ns]
        if sensor:
            sql += " AND sensor = ?"
            args.append(sensor)
        if gateway:
            sql += " AND gateway = ?"
            args.append(gateway)
        return self._query(sql + " ORDER BY start_ns, gateway, sensor LIMIT ?", (*args, limit))

    def alerts(
        self, since_ns: int, until_ns: int, detector: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Flagged readings (one row each, duplicates of a timestamp included), oldest first."""
        sql = (
            "SELECT gateway, sensor, ts_ns, detector, incident FROM flags "
            "WHERE ts_ns >= ? AND ts_ns < ?"
        )
        args: list[Any] = [since_ns, until_ns]
        if detector:
            sql += " AND detector = ?"
            args.append(detector)
        sql += " ORDER BY ts_ns, gateway, sensor, detector, id LIMIT ? OFFSET ?"
        return self._query(sql, (*args, limit, offset))

    def sensors(self) -> list[dict[str, Any]]:
        """Known (gateway, sensor) pairs with window counts."""
        return self._query(
            "SELECT gateway, sensor, COUNT(*) AS windows, MAX(start_ns) AS last_start_ns "
            "FROM windows GROUP BY gateway, sensor ORDER BY gateway, sensor",
            (),
        )

    def fleet(
        self, cls: str | None, since_ns: int, until_ns: int, limit: int
    ) -> list[dict[str, Any]]:
        """Fleet rows, oldest first."""
        sql = (
            "SELECT class, start_ns, count, mean, std FROM fleet "
            "WHERE start_ns >= ? AND start_ns < ?"
        )
        args: list[Any] = [since_ns, until_ns]
        if cls:
            sql += " AND class = ?"
            args.append(cls)
        return self._query(sql + " ORDER BY start_ns, class LIMIT ?", (*args, limit))

    def epochs(self, limit: int = 1_000_000) -> list[dict[str, Any]]:
        """Stored epochs with the time their results were stored."""
        return self._query(
            "SELECT start_ns, window_ns, stored_ns, shard FROM epochs "
            "ORDER BY start_ns, shard LIMIT ?",
            (limit,),
        )

    def shard_progress(self) -> list[dict[str, Any]]:
        """Per shard: the newest epoch released (start, end) and when a release was stored."""
        return self._query(
            "SELECT shard, last_epoch_ns, through_ns, stored_ns FROM shards ORDER BY shard", ()
        )
