"""A shard worker's health in numbers: Prometheus gauges labelled by shard and worker.

Every gauge is read at scrape time from the worker's own state (no update
loop), with two labels whose values are fixed per process — ``shard`` (its
index) and ``worker`` (its ``worker_id``) — so a Prometheus that scrapes every
worker of a party gets one series per worker and never more:

- ``tecc_shard_worker_role{shard, worker, role}``: 1 for the role this worker has
  now (``owner`` = the active worker, ``standby``, ``starting``), 0 for the others;
- ``tecc_shard_log_pending_parts{shard, worker}``: the shard's parts in the log not
  consumed yet (JetStream ``num_pending``; NaN while no consumer runs: a standby);
- ``tecc_shard_log_lag_seconds{shard, worker}``: 0 with nothing pending, else the age
  of the part consumed last (NaN as above);
- ``tecc_shard_committed_watermark_seconds{shard, worker}``: end of the last
  committed epoch;
- ``tecc_shard_readings_waiting{shard, worker}``: the lag in readings — readings
  stored that no committed epoch covers yet (NaN on a standby);
- ``tecc_shard_epochs_behind_peers{shard, worker}``: whole epochs between this
  worker's watermark and the furthest one the peers (worker ``shard`` of every
  other party) sent in the last agreement round (NaN before a round);
- ``tecc_shard_owner_lease_age_seconds{shard, worker}``: since the shard's current
  owner acquired its lease, as this worker sees it (NaN: free or not read yet).

The older ``tecc_shard_owner{shard}`` and ``tecc_shard_lease_age_seconds{shard}``
(:mod:`cloud_tecc.jetstream.standby`) stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Gauge

ROLES: Final = ("owner", "standby", "starting")
_NAN: Final = math.nan


def epochs_behind(own_ns: int, peers: Mapping[int, int], window_ns: int) -> int | None:
    """Whole epochs from ``own_ns`` to the furthest peer watermark (None without peers)."""
    if not peers or window_ns <= 0:
        return None
    return max(0, (max(peers.values()) - own_ns) // window_ns)


def _or_nan(value: float | None) -> float:
    return _NAN if value is None else float(value)


class WorkerMetrics:
    """The per-worker gauges of one party process (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        shard: int,
        worker: str,
        role: Callable[[], str] | None,
        pending: Callable[[], float | None],
        lag_s: Callable[[], float | None],
        watermark_ns: Callable[[], int],
        behind: Callable[[], int | None],
        waiting: Callable[[], int | None],
        owner_lease_age_s: Callable[[], float | None],
    ) -> None:
        labels = {"shard": str(shard), "worker": worker}
        names = ["shard", "worker"]

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, names, registry=registry).labels(**labels).set_function(read)

        if role is not None:
            current = role

            def is_role(r: str) -> Callable[[], float]:
                return lambda: 1.0 if current() == r else 0.0

            roles = Gauge(
                "tecc_shard_worker_role",
                "1 for this worker's role now (owner = active, standby, starting)",
                [*names, "role"],
                registry=registry,
            )
            for r in ROLES:
                roles.labels(**labels, role=r).set_function(is_role(r))
        gauge(
            "tecc_shard_log_pending_parts",
            "The shard's parts in the log not consumed yet (NaN: no consumer runs here)",
            lambda: _or_nan(pending()),
        )
        gauge(
            "tecc_shard_log_lag_seconds",
            "0 with nothing pending, else the age of the part consumed last (NaN: no consumer)",
            lambda: _or_nan(lag_s()),
        )
        gauge(
            "tecc_shard_committed_watermark_seconds",
            "End of the last committed epoch of this worker's store",
            lambda: watermark_ns() / 1e9,
        )
        gauge(
            "tecc_shard_readings_waiting",
            "Readings stored that no committed epoch covers yet (NaN on a standby)",
            lambda: _or_nan(waiting()),
        )
        gauge(
            "tecc_shard_epochs_behind_peers",
            "Epochs between this worker's watermark and the furthest peer's (NaN: no round)",
            lambda: _or_nan(behind()),
        )
        gauge(
            "tecc_shard_owner_lease_age_seconds",
            "Seconds since the shard's owner acquired its lease, as seen here (NaN: unknown)",
            lambda: _or_nan(owner_lease_age_s()),
        )
