"""Run a shard worker's active part exactly while it holds the shard's lease.

:func:`run_while_leased` is the whole standby logic of a worker::

    async with Lease(js, shard=k, worker_id=wid, ttl_s=3) as lease:
        await run_while_leased(lease, start=worker.start, stop=worker.stop, metrics=m)

It waits as standby, awaits ``start()`` once the lease is held, and awaits
``stop()`` the moment the lease is lost (refused or overdue renewal), then
waits as standby again. Cancelling it (a clean shutdown) stops the active part
and releases the lease, so a standby takes over at once instead of after the
TTL. The active part itself should still check ``lease.held`` before each
externally visible action and pass ``lease.token`` to fenced writes
(:mod:`.commits`): ``stop()`` runs asynchronously, the token check does not.
In the lease's grace (a leader election of the lease bucket) ``held`` stays
true while the key may already have expired on the server: only the fenced
writes are safe then, and they are the only writes that matter.

Metrics (one registry per worker): ``tecc_shard_takeover_seconds`` (end of the
previous owner's term — its lease's expiry, or its release — to this worker
active; only observed when the previous term was seen), and per shard
``tecc_shard_lease_age_seconds`` (since this worker acquired it, 0 if not
owned) and ``tecc_shard_owner`` (1 while this worker owns the shard),
``tecc_shard_lease_in_grace`` (1 while it owns it past the TTL because the lease
bucket is unreachable) and ``tecc_shard_lease_rejoins`` (terms kept by a rejoin
after the key expired in the grace, since the worker started).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Gauge, Histogram

from cloud_tecc.jetstream.lease import Lease

log = logging.getLogger(__name__)

TAKEOVER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0)


class LeaseMetrics:
    """The shard lease metrics of one worker's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.takeover = Histogram(
            "tecc_shard_takeover_seconds",
            "End of the previous owner's lease term to this worker active",
            buckets=TAKEOVER_BUCKETS,
            registry=registry,
        )
        self.lease_age = Gauge(
            "tecc_shard_lease_age_seconds",
            "Seconds since this worker acquired the shard's lease (0 when not owned)",
            ["shard"],
            registry=registry,
        )
        self.owner = Gauge(
            "tecc_shard_owner",
            "1 while this worker owns the shard",
            ["shard"],
            registry=registry,
        )

        self.in_grace = Gauge(
            "tecc_shard_lease_in_grace",
            "1 while this worker owns the shard past the TTL, its lease bucket unreachable",
            ["shard"],
            registry=registry,
        )
        self.rejoins = Gauge(
            "tecc_shard_lease_rejoins",
            "Lease terms kept by a rejoin after the key expired in the grace",
            ["shard"],
            registry=registry,
        )

    def track(self, lease: Lease) -> None:
        """Export ``lease``'s age and ownership (read at scrape time)."""
        shard = str(lease.shard)
        self.lease_age.labels(shard).set_function(lambda: lease.age_s)
        self.owner.labels(shard).set_function(lambda: 1.0 if lease.valid() else 0.0)
        self.in_grace.labels(shard).set_function(lambda: 1.0 if lease.in_grace else 0.0)
        self.rejoins.labels(shard).set_function(lambda: float(lease.rejoins))


async def run_while_leased(
    lease: Lease,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    *,
    metrics: LeaseMetrics | None = None,
    wall_ns: Callable[[], int] = time.time_ns,
) -> None:
    """Standby until ``lease`` is held, active (``start``) until lost (``stop``); forever.

    Returns only by cancellation (after ``stop()`` and a release) or by an
    exception from ``start``/``stop`` (the lease is released first).
    """
    if metrics is not None:
        metrics.track(lease)
    while True:
        await lease.acquire()
        active = True  # from here on stop() undoes whatever start() got done
        try:
            await start()
            if lease.previous_end_ns is not None:
                takeover_s = max(0.0, (wall_ns() - lease.previous_end_ns) / 1e9)
                log.info("shard %d: took over in %.3f s", lease.shard, takeover_s)
                if metrics is not None:
                    metrics.takeover.observe(takeover_s)
            reason = await lease.wait_lost()
            active = False
            log.warning("shard %d: stopping the active part (%s)", lease.shard, reason)
            await stop()
        except BaseException:
            if active:
                await asyncio.shield(stop())
            await asyncio.shield(lease.release())
            raise
