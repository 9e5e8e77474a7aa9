"""The lease key's record, a worker's standing with its shard, and the lease's arguments.

See :mod:`cloud_tecc.jetstream.lease` (the lease itself) and docs/CLOUD.md
"Leases and takeover".
"""

from __future__ import annotations

import enum
import re

import msgspec

_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
#: A standby's poll while the holder it saw is due to expire (:func:`standby_poll_s`).
FAST_POLL_S = 0.05


class LeaseRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The value of a shard's lease key: who owns it, since when, last renewed when."""

    worker_id: str
    acquired_ns: int  # the owner's wall clock when it acquired (identifies the term)
    renewed_ns: int  # the owner's wall clock at its last renewal
    ttl_s: int  # the TTL the owner wrote (Nats-TTL)
    released_ns: int = 0  # set only in the delete marker of a voluntary release


class LeaseState(enum.Enum):
    """Where this worker stands with the shard."""

    STANDBY = "standby"  # not the owner (yet)
    HELD = "held"  # the owner, renewing
    LOST = "lost"  # was the owner; renewal refused or overdue
    RELEASED = "released"  # was the owner; handed over voluntarily


def check_lease_args(*, shard: int, worker_id: str, ttl_s: int, grace_s: float) -> None:
    """ValueError naming the argument and what to write instead, if one is out of range."""
    if not isinstance(ttl_s, int) or ttl_s < 1:
        raise ValueError(
            f"ttl_s: {ttl_s!r} is not a whole number of seconds >= 1 (NATS per-message "
            "TTLs are whole seconds); write e.g. 3"
        )
    if shard < 0:
        raise ValueError(f"shard: {shard} must be >= 0")
    if not 0 <= grace_s <= 600:
        raise ValueError(
            f"grace_s: {grace_s!r} must be 0-600 seconds (0 = stand down at the "
            "deadline); write e.g. 6, about a JetStream leader election"
        )
    if not _WORKER_ID.fullmatch(worker_id):
        raise ValueError(
            f"worker_id: {worker_id!r} must be 1-128 of A-Z a-z 0-9 _ . : - "
            "(e.g. the host name and process id)"
        )


def standby_poll_s(holder: LeaseRecord | None, poll_s: float, now_ns: int) -> float:
    """A standby's pause before its next look at the key: ``poll_s``, or
    :data:`FAST_POLL_S` from ``poll_s`` before the ``holder`` it saw is due to expire
    (its last renewal + its TTL, on this host's wall clock ``now_ns``) until a second
    after.

    A live holder renews every TTL / 3, so its due time stays far ahead and the fast
    polls start only once it missed renewals (it died or froze). The server still
    decides the expiry; this only looks sooner.
    """
    if holder is None:
        return poll_s
    due_ns = holder.renewed_ns + holder.ttl_s * 10**9
    if due_ns - poll_s * 1e9 <= now_ns <= due_ns + 1e9:
        return min(poll_s, FAST_POLL_S)
    return poll_s
