"""A JetStream shard worker's active part, run exactly while it holds the shard's lease.

Every worker of a shard (``jetstream:`` set) contends for the lease
``tecc_leases/shard.<k>`` under its ``worker_id``. :class:`ActiveShard` is the
supervisor of :func:`~cloud_tecc.jetstream.standby.run_while_leased`:

- **standby**: nothing runs but ``/healthz`` (``"role": "standby"``, the owner it
  sees), ``/metrics`` and the quote checks of the peers, the dealer and the
  output every half ``attestation.refresh_s`` (a warm standby: a takeover's
  session starts from verified identities) and, with ``jetstream.standby_follows``,
  the :class:`~cloud_tecc.party.follower.LogFollower` that stores the shard's parts
  as they are logged; no MPC listener, no dealer link.
- **on acquiring** (token *t*): ``CommittedState.claim(fence=t)``, then the store is
  rebuilt from the party's log — the committed epochs up to the record's
  ``log_seq`` (:mod:`cloud_tecc.jetstream.epochlog`: states, epochs, result
  messages not yet released) and the shard's share parts from the start of the
  stream (:class:`~cloud_tecc.party.logfeed.LogFeed`, the store dedups), or from
  just after the follower's ack floor — and the
  coordinator starts from the committed watermark, with the log consumer and the
  result delivery.
- **every epoch** is published to ``TECC_EPOCHS`` and written to the fenced commit
  record before the local commit (:meth:`commit`): a ``FencedError`` ends the
  term at once (nothing of it is committed or delivered).
- **on losing** the lease: the coordinator (its MPC mesh and dealer link close
  with it), the feed and the delivery are cancelled at once.

Takeover time (``tecc_shard_takeover_commit_seconds``): from the end of the
previous owner's term (its lease's expiry or release, wall clock of the party's
hosts) to the first epoch this owner commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Histogram

from cloud_tecc.analytics.plan import StreamState
from cloud_tecc.config import PartyConfig
from cloud_tecc.errors import CloudError
from cloud_tecc.jetstream import epochlog
from cloud_tecc.jetstream.client import party_client
from cloud_tecc.jetstream.commits import CommittedState
from cloud_tecc.jetstream.kv import TRANSIENT, FencedError, KVError
from cloud_tecc.jetstream.lease import Lease
from cloud_tecc.jetstream.standby import TAKEOVER_BUCKETS, LeaseMetrics, run_while_leased
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.follower import EpochFollower, LogFollower, epoch_rows
from cloud_tecc.party.logfeed import LogFeed
from cloud_tecc.party.store import ShareStore
from cloud_tecc.service.health import LeaseHealth
from cloud_tecc.tasks import cancel_and_wait, check_cancelled

log = logging.getLogger("cloud_tecc.party.takeover")
_RETRY_S = 0.5
#: Pause between attempts to record an epoch while the party's JetStream elects a leader.
COMMIT_RETRY_S = 0.25
#: A standby's next quote check after one failed (a peer down): sooner than refresh_s / 2.
WARM_RETRY_S = 2.0


class ActiveShard:
    """Lease, committed state and the active part of one shard worker."""

    def __init__(
        self,
        *,
        cfg: PartyConfig,
        store: ShareStore,
        feed: LogFeed,
        registry: CollectorRegistry,
    ) -> None:
        if cfg.jetstream is None:
            raise CloudError("a shard lease needs jetstream: in the party config")
        self.cfg, self.js_cfg, self.store, self.feed = cfg, cfg.jetstream, store, feed
        self.state_dir: Path = cfg.service.state_dir
        self.coordinator: Coordinator | None = None
        self.lease: Lease | None = None
        self.commits: CommittedState | None = None
        self.nc: Client | None = None
        self.role = "starting"
        self.owner = ""  # the holder this worker saw last
        self._owner_since_ns = 0  # when that holder acquired (its wall clock)
        self.released_ns = 0
        self._takeover_from: int | None = None
        self._starting = False  # between acquiring the lease and the owner's role
        self._tasks: list[asyncio.Task[None]] = []
        self.follower = (
            LogFollower(feed, retention_s=cfg.retention_s, registry=registry)
            if cfg.jetstream.standby_follows
            else None
        )
        self.epochs = EpochFollower(store, cfg.shard) if self.follower is not None else None
        self.metrics = LeaseMetrics(registry)
        self.takeover_commit = Histogram(
            "tecc_shard_takeover_commit_seconds",
            "End of the previous owner's lease term to this owner's first committed epoch",
            buckets=TAKEOVER_BUCKETS,
            registry=registry,
        )

    # -- the supervisor ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, open the lease and the commit record, then standby/active for ever."""
        self.nc = await party_client(
            self.js_cfg, self.state_dir, f"lease-{self.cfg.worker_id}", "the lease"
        )
        js = self.nc.jetstream(timeout=5.0)
        replicas = self.js_cfg.replicas
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                self.lease = Lease(
                    js,
                    shard=self.cfg.shard,
                    worker_id=self.cfg.worker_id,
                    ttl_s=self.js_cfg.lease_ttl_s,
                    grace_s=self.js_cfg.lease_grace_s,
                    replicas=replicas,
                )
                await self.lease.open()
                self.commits = await CommittedState.open(
                    js, shard=self.cfg.shard, replicas=replicas
                )
                await epochlog.ensure_stream(js, self.js_cfg)
                break
            except (*TRANSIENT, KVError) as exc:
                log.warning("lease and commit buckets not ready (%s); retrying", exc)
                await asyncio.sleep(_RETRY_S)
        self.role = "standby"
        self._follow()
        watcher = asyncio.create_task(self._watch_owner(), name="lease-owner")
        warm = asyncio.create_task(self._keep_warm(), name="standby-attestation")
        try:
            while True:
                check_cancelled()
                try:
                    async with self.lease:
                        await run_while_leased(
                            self.lease, self._start, self._stop, metrics=self.metrics
                        )
                except (*TRANSIENT, CloudError) as exc:
                    # start() could not claim or replay (JetStream away): the lease was
                    # released; contend again once the party's JetStream answers
                    log.warning("shard %d: not active (%r); contending again", self.cfg.shard, exc)
                    self.role = "standby"
                    self._follow()
                    await asyncio.sleep(_RETRY_S)
        finally:
            await cancel_and_wait([watcher, warm])
            await asyncio.shield(self._handoff())
            with contextlib.suppress(*TRANSIENT):
                await self.nc.close()

    async def _watch_owner(self) -> None:
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            lease = self.lease
            if lease is not None:
                with contextlib.suppress(*TRANSIENT, KVError):
                    rec = await lease.holder()
                    self.owner = rec.worker_id if rec is not None else ""
                    self._owner_since_ns = rec.acquired_ns if rec is not None else 0
            await asyncio.sleep(1.0)

    async def _keep_warm(self) -> None:
        """While standby: verify the peers', the dealer's and the output's quotes every
        half ``attestation.refresh_s`` (every ``WARM_RETRY_S`` while one fails), so a
        takeover's session starts from verified identities instead of fetching quotes."""
        every, last = self.cfg.service.trust.refresh_s / 2, ""
        while True:
            check_cancelled()
            pause = every
            coordinator = self.coordinator
            if coordinator is not None and self.role == "standby" and not self._starting:
                try:
                    await coordinator.prewarm()
                    last = ""
                except (CloudError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    # logged once per distinct failure, then at debug level
                    (log.debug if str(exc) == last else log.info)(
                        "shard %d: standby could not verify %s", self.cfg.shard, exc
                    )
                    last, pause = str(exc), min(every, WARM_RETRY_S)
            await asyncio.sleep(pause)

    def _follow(self) -> None:
        """Standby: follow the shard's share parts and recorded epochs into the store."""
        if self.follower is not None and self.epochs is not None and self.commits is not None:
            self.follower.start()
            if self.nc is not None:
                self.epochs.start(self.nc.jetstream(timeout=5.0), self.commits)

    async def _handoff(self) -> tuple[int, int]:
        """Stop following: (the share sequence the term reads from, the epoch sequence the
        replay continues after) — (1, 0) without a follower."""
        if self.follower is None or self.epochs is None:
            return 1, 0
        start_seq, after_seq = await asyncio.gather(self.follower.handoff(), self.epochs.stop())
        return start_seq, after_seq

    def _fenced(self) -> tuple[Lease, CommittedState, Client]:
        if self.lease is None or self.commits is None or self.nc is None:
            raise CloudError("the shard's active part started before its lease was opened")
        return self.lease, self.commits, self.nc

    def _need(self) -> tuple[Lease, CommittedState, Coordinator, Client]:
        lease, commits, nc = self._fenced()
        if self.coordinator is None:
            raise CloudError("the shard's active part started without its coordinator")
        return lease, commits, self.coordinator, nc

    async def _start(self) -> None:
        self._starting = True  # no standby quote check from here on (a warm takeover)
        try:
            await self._become_owner()
        finally:
            self._starting = False

    async def _become_owner(self) -> None:
        lease, commits, coordinator, nc = self._need()
        token = lease.token
        start_seq, after_seq = await self._handoff()
        record = await commits.claim(
            fence=token, worker_id=self.cfg.worker_id, now_ns=time.time_ns()
        )
        self.released_ns = record.released_ns

        async def apply(batch: list[epochlog.EpochWire]) -> None:
            await asyncio.to_thread(self.store.commit_epochs, epoch_rows(batch, record.released_ns))

        t0 = time.monotonic()
        js = nc.jetstream(timeout=5.0)
        n = await epochlog.replay(js, self.cfg.shard, record.log_seq, apply, after_seq=after_seq)
        if after_seq and self.store.watermark() != record.watermark_ns:
            # the followed store disagrees with the record: rebuild it from the whole log
            log.warning(
                "shard %d: followed store at watermark %d, committed %d: replaying all epochs",
                self.cfg.shard,
                self.store.watermark(),
                record.watermark_ns,
            )
            n = await epochlog.replay(js, self.cfg.shard, record.log_seq, apply)
        if after_seq:  # the follower queued results the record now says were released
            await asyncio.to_thread(self.store.drop_released, record.released_ns)
        if self.store.watermark() != record.watermark_ns:
            log.warning(
                "shard %d: store at watermark %d after the replay, committed %d (epochs older "
                "than the log's max_age_s are gone)",
                self.cfg.shard,
                self.store.watermark(),
                record.watermark_ns,
            )
        log.info(
            "shard %d: owner with token %d; %d committed epochs replayed in %.3f s, resuming "
            "at watermark %d",
            self.cfg.shard,
            token,
            n,
            time.monotonic() - t0,
            record.watermark_ns,
        )
        coordinator.resume()
        self._takeover_from = lease.previous_end_ns
        self.role, self.owner = "owner", self.cfg.worker_id
        for coro, name in (
            (self.feed.run(term=token, start_seq=start_seq), "log-feed"),
            (coordinator.run(), "coordinator"),
            (coordinator.deliver(), "result-delivery"),
        ):
            self._tasks.append(asyncio.create_task(self._guard(coro, name), name=name))

    @staticmethod
    async def _guard(coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("active task %s failed", name)

    async def _stop(self) -> None:
        self.role = "standby"
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)  # a cancel lost inside nats-py is repeated
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.coordinator is not None:  # its last local commit, before the follower writes
            await self.coordinator.settled()
        try:
            await self.feed.close()
        except (*TRANSIENT, CloudError) as exc:  # the connection is gone anyway
            log.info("shard %d: log connection closed with %r", self.cfg.shard, exc)
        self.feed.log = None
        self._follow()
        log.warning("shard %d: active part stopped", self.cfg.shard)

    # -- the coordinator's EpochFence -------------------------------------------------------

    async def commit(
        self,
        end_ns: int,
        states: Mapping[tuple[str, str], StreamState],
        readings: int,
        done_ns: int,
        body: bytes | None,
        *,
        map_id: str = "",
    ) -> None:
        """Publish the epoch, then the fenced commit record (see the module docstring)."""
        lease, commits, nc = self._fenced()
        if not lease.held:
            raise FencedError(f"shard {self.cfg.shard}: lease lost ({lease.lost_reason})")
        epoch = epochlog.EpochWire(
            shard=self.cfg.shard,
            end_ns=end_ns,
            readings=readings,
            done_ns=done_ns,
            fence=lease.token,
            states=epochlog.wire_states(states),
            body=body,
            map=map_id,
        )
        msg_id = f"{self.cfg.shard}:{lease.token}:{end_ns}:{done_ns}"
        while True:
            check_cancelled()
            try:
                seq = await epochlog.publish_epoch(nc.jetstream(timeout=5.0), epoch, msg_id)
                await commits.commit(
                    fence=lease.token,
                    worker_id=self.cfg.worker_id,
                    now_ns=time.time_ns(),
                    watermark_ns=end_ns,
                    log_seq=seq,
                )
                break
            except FencedError as exc:
                lease.abandon(f"fenced: {exc}")
                raise
            except TRANSIENT as exc:
                # a stream or bucket leader lost (a JetStream node died): retry in place,
                # the session and the computed epoch kept, while the lease holds
                if not lease.held:
                    raise KVError(
                        f"epoch {end_ns} not recorded in the party's JetStream ({exc!r}) "
                        f"and the lease is lost ({lease.lost_reason})"
                    ) from exc
                log.warning("shard %d: epoch %d not recorded yet (%r); retrying",
                            self.cfg.shard, end_ns, exc)  # fmt: skip
                await asyncio.sleep(COMMIT_RETRY_S)
        if self._takeover_from is not None:
            took = max(0.0, (time.time_ns() - self._takeover_from) / 1e9)
            self._takeover_from = None
            self.takeover_commit.observe(took)
            log.warning(
                "shard %d: first epoch committed %.3f s after the previous owner's term ended",
                self.cfg.shard,
                took,
            )

    async def released(self, end_ns: int) -> None:
        """Record the output's acceptance (fenced; a failure only means a re-send later)."""
        lease, commits, _ = self._fenced()
        if end_ns <= self.released_ns:
            return
        try:
            await commits.release(
                fence=lease.token,
                worker_id=self.cfg.worker_id,
                now_ns=time.time_ns(),
                released_ns=end_ns,
            )
        except FencedError as exc:
            lease.abandon(f"fenced: {exc}")
            return
        except (*TRANSIENT, KVError) as exc:
            log.warning(
                "released epoch %d not recorded (%r); re-sent after a takeover", end_ns, exc
            )
            return
        self.released_ns = end_ns

    def owner_lease_age_s(self, now_ns: int) -> float | None:
        """Seconds since the current holder acquired the lease (its clock), None if unknown."""
        if not self._owner_since_ns:
            return None
        return round(max(0, now_ns - self._owner_since_ns) / 1e9, 3)

    def health(self, now_ns: int | None = None) -> LeaseHealth:
        """For ``/healthz``: this worker, the owner it sees, lease ages and token."""
        lease = self.lease
        now_ns = time.time_ns() if now_ns is None else now_ns
        return LeaseHealth(
            worker_id=self.cfg.worker_id,
            owner=self.owner,
            lease_age_s=round(lease.age_s, 3) if lease is not None else 0.0,
            owner_lease_age_s=self.owner_lease_age_s(now_ns),
            token=lease.token if lease is not None and lease.valid() else 0,
            follow_floor=self.follower.floor if self.follower is not None else None,
            follow_epoch_seq=self.epochs.applied_seq if self.epochs is not None else None,
        )
