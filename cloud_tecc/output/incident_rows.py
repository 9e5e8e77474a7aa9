"""SQLite rows of incidents and flags (the store's half that knows the incident model)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from cloud_tecc.output.incidents import Incident, State, WindowStats
from cloud_tecc.output.outbox import record_transition
from cloud_tecc.output.tracking import Key, Tracked

_SELECT: Final = (
    "SELECT id, gateway, sensor, detector, state, start_ns, end_ns, flags, doc FROM incidents "
)
_LIVE: Final = ("pending", "open", "acknowledged")
#: The ``shard`` of gateway attestation incidents: outside every data shard, so no epoch's
#: progress closes them (only the clusters' enrolment states do).
ATTESTATION_SHARD: Final = -1


@dataclass(frozen=True, slots=True)
class IncidentQuery:
    """Filters and page of ``GET /api/v1/incidents``."""

    gateway: str | None = None
    sensor: str | None = None
    detector: str | None = None
    state: State | None = None
    since_ns: int = 0
    until_ns: int = 2**63 - 1
    limit: int = 100
    offset: int = 0


def _doc(inc: Incident) -> str:
    return json.dumps(
        {
            "recent_ns": list(inc.recent_ns),
            "recent_pos": list(inc.recent_pos),
            "worst": None if inc.worst is None else asdict(inc.worst),
            "worst_flags": inc.worst_flags,
            "acknowledged_by": inc.acknowledged_by,
            "acknowledged_ns": inc.acknowledged_ns,
        }
    )


def _from_row(row: tuple[Any, ...]) -> Incident:
    iid, gw, sensor, det, state, start, end, flags, doc_text = row
    doc = json.loads(doc_text)
    worst = None if doc.get("worst") is None else WindowStats(**doc["worst"])
    return Incident(
        gateway=gw,
        sensor=sensor,
        detector=det,
        state=State(state),
        start_ns=int(start),
        end_ns=int(end),
        flags=int(flags),
        recent_ns=tuple(int(t) for t in doc.get("recent_ns", [])),
        recent_pos=tuple(int(p) for p in doc.get("recent_pos", [])),
        worst=worst,
        worst_flags=int(doc.get("worst_flags", 0)),
        acknowledged_by=str(doc.get("acknowledged_by", "")),
        acknowledged_ns=doc.get("acknowledged_ns"),
        id=int(iid),
    )


def incident_json(inc: Incident) -> dict[str, Any]:
    """The API form of an incident."""
    return {
        "id": inc.id,
        "gateway": inc.gateway,
        "sensor": inc.sensor,
        "detector": inc.detector,
        "state": inc.state.value,
        "start_ns": inc.start_ns,
        "end_ns": inc.end_ns,
        "flags": inc.flags,
        "worst_window": None if inc.worst is None else asdict(inc.worst),
        "worst_window_flags": inc.worst_flags,
        "acknowledged_by": inc.acknowledged_by or None,
        "acknowledged_ns": inc.acknowledged_ns,
    }


def put_incident(cur: sqlite3.Cursor, inc: Incident, now_ns: int, shard: int = 0) -> int:
    """Insert or update one incident (a new one in ``shard``, its stream's); its id.

    In the same transaction the incident's state is recorded in the delivery
    outbox (once per incident and state, :func:`cloud_tecc.output.outbox.record_transition`).
    """
    vals = (inc.gateway, inc.sensor, inc.detector, inc.state.value, inc.start_ns, inc.end_ns)
    if inc.id is None:
        cur.execute(
            "INSERT INTO incidents (gateway, sensor, detector, state, start_ns, end_ns, flags, "
            "doc, updated_ns, shard) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (*vals, inc.flags, _doc(inc), now_ns, shard),
        )
        iid = int(cur.lastrowid or 0)
    else:
        cur.execute(
            "UPDATE incidents SET gateway=?, sensor=?, detector=?, state=?, start_ns=?, "
            "end_ns=?, flags=?, doc=?, updated_ns=? WHERE id=?",
            (*vals, inc.flags, _doc(inc), now_ns, inc.id),
        )
        iid = inc.id
    record_transition(cur, incident_json(replace(inc, id=iid)), now_ns)
    return iid


def live_incidents(cur: sqlite3.Cursor, shard: int = 0) -> dict[Key, Incident]:
    """Pending, open and acknowledged incidents of ``shard`` by key (at most one each).

    A stream lives in one shard, so do its incidents: a shard's epoch moves
    only its own incidents on (one shard ahead of another never closes the
    other's incidents early).
    """
    rows = cur.execute(
        _SELECT + "WHERE state IN (?,?,?) AND shard=? ORDER BY id", (*_LIVE, shard)
    ).fetchall()
    return {inc.key: inc for inc in map(_from_row, rows)}


def get_incident(cur: sqlite3.Cursor, incident_id: int) -> Incident | None:
    """One incident by id."""
    row = cur.execute(_SELECT + "WHERE id=?", (incident_id,)).fetchone()
    return None if row is None else _from_row(row)


def write_tracked(
    cur: sqlite3.Cursor, epoch_ns: int, tracked: Tracked, now_ns: int, shard: int = 0
) -> None:
    """Persist what one shard's epoch changed: incidents, drops and the kept flags."""
    ids = [put_incident(cur, inc, now_ns, shard) for inc in tracked.incidents]
    cur.executemany(
        "DELETE FROM incidents WHERE id=?", [(d.id,) for d in tracked.dropped if d.id is not None]
    )
    cur.executemany(
        "INSERT INTO flags (gateway, sensor, ts_ns, detector, start_ns, incident, stored_ns, "
        "shard) VALUES (?,?,?,?,?,?,?,?)",
        [
            (
                f.gateway,
                f.sensor,
                f.ts_ns,
                f.detector,
                epoch_ns,
                ids[f.incident] if f.incident >= 0 else None,
                now_ns,
                shard,
            )
            for f in tracked.flags
            if f.kept
        ],
    )


def query_incidents(cur: sqlite3.Cursor, q: IncidentQuery) -> list[Incident]:
    """Incidents matching ``q``; live ones first, then by newest end."""
    sql = _SELECT + "WHERE state != 'pending' AND end_ns >= ? AND start_ns < ?"
    args: list[Any] = [q.since_ns, q.until_ns]
    for clause, value in (
        (" AND gateway = ?", q.gateway),
        (" AND sensor = ?", q.sensor),
        (" AND detector = ?", q.detector),
    ):
        if value:
            sql += clause
            args.append(value)
    if q.state is not None:
        sql += " AND state = ?"
        args.append(q.state.value)
    sql += " ORDER BY state = 'closed', end_ns DESC, id DESC LIMIT ? OFFSET ?"
    return [_from_row(r) for r in cur.execute(sql, (*args, q.limit, q.offset)).fetchall()]
