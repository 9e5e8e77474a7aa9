"""The delivery outbox: incident transitions, recorded with the incident, delivered per target.

Delivery is at-least-once with an idempotency key per transition. A
transition (an incident reaching ``open``, ``acknowledged`` or ``closed``) is
written by :func:`record_transition` *in the same SQLite transaction* as the
incident itself, so what the store says happened and what will be delivered
cannot diverge, and both survive a restart. Its key is
``"<incident id>:<state>"``: writing the same incident again in the same state
(a new flag of an open incident) adds nothing.

Each delivery target keeps its own cursor in ``deliveries`` (target, key):
pending → delivered, or → dead after ``max_attempts`` (or at once on a
permanent refusal such as HTTP 400). A target delivers in transition order
and stops at the first failure (head of line) until its backoff passes, so a
receiver sees an incident's ``open`` before its ``closed``. Dead letters are
capped per target (oldest dropped first, counted) and can be replayed.
Transitions older than ``backlog_s`` are never enqueued for a target added
later, and the table is pruned with the incidents' retention: storage stays
bounded.

Pure decisions (backoff, what is due) are functions of their inputs; the
clock is passed in.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, incident INTEGER NOT NULL,
    state TEXT NOT NULL, doc TEXT NOT NULL, created_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    target TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_ns INTEGER NOT NULL, last_error TEXT NOT NULL,
    updated_ns INTEGER NOT NULL, PRIMARY KEY (target, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (target, state, seq);
"""
#: Incident states that are delivered (``pending`` is not shown to anyone).
DELIVERED_STATES: Final = ("open", "acknowledged", "closed")


class DeliveryState(enum.StrEnum):
    """Where one transition stands for one target."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Retry:
    """Backoff and bounds of a target's retries."""

    base_s: float = 1.0
    max_s: float = 300.0
    max_attempts: int = 50
    dead_letter_max: int = 1000
    backlog_s: float = 86_400.0

    def delay_ns(self, attempts: int, jitter: float) -> int:
        """Wait after ``attempts`` failures: base·2^(attempts−1), capped, times ``jitter``.

        ``jitter`` in [0.5, 1] comes from the caller (randomness passed in).
        """
        exp = min(self.max_s, self.base_s * 2 ** min(attempts - 1, 40))
        return int(exp * jitter * 1e9)


@dataclass(frozen=True, slots=True)
class Pending:
    """One transition due for delivery to one target."""

    seq: int
    key: str
    state: str
    incident: dict[str, Any]
    attempts: int
    created_ns: int


def create(db: sqlite3.Connection) -> None:
    """Create the outbox tables (idempotent)."""
    db.executescript(SCHEMA)


def record_transition(cur: sqlite3.Cursor, incident: Mapping[str, Any], now_ns: int) -> bool:
    """Record ``incident`` (its API form, with an id) reaching its state; True if new."""
    state = str(incident["state"])
    if state not in DELIVERED_STATES or incident.get("id") is None:
        return False
    key = f"{incident['id']}:{state}"
    cur.execute(
        "INSERT OR IGNORE INTO transitions (key, incident, state, doc, created_ns) "
        "VALUES (?,?,?,?,?)",
        (key, int(incident["id"]), state, json.dumps(dict(incident), sort_keys=True), now_ns),
    )
    return cur.rowcount == 1


def enqueue(cur: sqlite3.Cursor, target: str, now_ns: int, retry: Retry) -> int:
    """Give ``target`` every transition it has not seen yet (within the backlog); how many."""
    cur.execute(
        "INSERT OR IGNORE INTO deliveries (target, seq, state, attempts, next_ns, last_error, "
        "updated_ns) SELECT ?, seq, 'pending', 0, 0, '', ? FROM transitions "
        "WHERE created_ns >= ? AND seq > COALESCE((SELECT MAX(seq) FROM deliveries "
        "WHERE target = ?), 0)",
        (target, now_ns, now_ns - int(retry.backlog_s * 1e9), target),
    )
    return cur.rowcount


def due(cur: sqlite3.Cursor, target: str, now_ns: int, limit: int = 100) -> list[Pending]:
    """The target's pending transitions in order, up to the first one still backing off."""
    rows = cur.execute(
        "SELECT d.seq, t.key, t.state, t.doc, d.attempts, t.created_ns, d.next_ns "
        "FROM deliveries d JOIN transitions t ON t.seq = d.seq "
        "WHERE d.target = ? AND d.state = 'pending' ORDER BY d.seq LIMIT ?",
        (target, limit),
    ).fetchall()
    out = []
    for seq, key, state, doc, attempts, created, next_ns in rows:
        if next_ns > now_ns:
            break  # head of line: later transitions wait for this one
        out.append(Pending(seq, key, state, json.loads(doc), attempts, created))
    return out


def delivered(cur: sqlite3.Cursor, target: str, seq: int, now_ns: int) -> None:
    """Mark one transition delivered to ``target``."""
    cur.execute(
        "UPDATE deliveries SET state='delivered', attempts=attempts+1, updated_ns=?, "
        "last_error='' WHERE target=? AND seq=?",
        (now_ns, target, seq),
    )


def failed(
    cur: sqlite3.Cursor,
    target: str,
    item: Pending,
    *,
    error: str,
    now_ns: int,
    retry: Retry,
    jitter: float,
    permanent: bool = False,
) -> DeliveryState:
    """Count one failed attempt: back off, or give up (dead letter); the new state."""
    attempts = item.attempts + 1
    dead = permanent or attempts >= retry.max_attempts
    state = DeliveryState.DEAD if dead else DeliveryState.PENDING
    cur.execute(
        "UPDATE deliveries SET state=?, attempts=?, next_ns=?, last_error=?, updated_ns=? "
        "WHERE target=? AND seq=?",
        (
            state.value,
            attempts,
            now_ns + retry.delay_ns(attempts, jitter),
            error[:500],
            now_ns,
            target,
            item.seq,
        ),
    )
    if dead:
        _cap_dead(cur, target, retry.dead_letter_max)
    return state


def _cap_dead(cur: sqlite3.Cursor, target: str, cap: int) -> None:
    cur.execute(
        "DELETE FROM deliveries WHERE target=? AND state='dead' AND seq NOT IN "
        "(SELECT seq FROM deliveries WHERE target=? AND state='dead' ORDER BY seq DESC LIMIT ?)",
        (target, target, cap),
    )


def replay(cur: sqlite3.Cursor, target: str, now_ns: int) -> int:
    """Put every dead letter of ``target`` back in the queue; how many."""
    cur.execute(
        "UPDATE deliveries SET state='pending', attempts=0, next_ns=0, updated_ns=? "
        "WHERE target=? AND state='dead'",
        (now_ns, target),
    )
    return cur.rowcount


def stats(cur: sqlite3.Cursor, target: str) -> dict[str, int]:
    """Counts by state for one target."""
    rows = cur.execute(
        "SELECT state, COUNT(*) FROM deliveries WHERE target=? GROUP BY state", (target,)
    ).fetchall()
    out = {s.value: 0 for s in DeliveryState}
    out.update({str(state): int(n) for state, n in rows})
    return out


def dead_letters(cur: sqlite3.Cursor, target: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters of ``target`` with their last error."""
    rows = cur.execute(
        "SELECT t.key, t.state, d.attempts, d.last_error, d.updated_ns FROM deliveries d "
        "JOIN transitions t ON t.seq = d.seq WHERE d.target=? AND d.state='dead' "
        "ORDER BY d.seq DESC LIMIT ?",
        (target, limit),
    ).fetchall()
    return [
        {"key": k, "transition": s, "attempts": a, "last_error": e, "updated_ns": u}
        for k, s, a, e, u in rows
    ]


def prune(cur: sqlite3.Cursor, before_ns: int) -> int:
    """Drop transitions (and their delivery rows) created before ``before_ns``."""
    cur.execute(
        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM transitions WHERE created_ns < ?)",
        (before_ns,),
    )
    cur.execute("DELETE FROM transitions WHERE created_ns < ?", (before_ns,))
    return cur.rowcount
