"""The agent: sources → ingest → batcher → seal → spool → uplinks, in one TaskGroup.

Flow of one batch: the batch loop drains the ingest hand-off every ``tick``
into the :class:`~gateway.batcher.Batcher`; when a batch is due it is shared
and sealed once for all N clusters (in a worker thread), the N frames are
committed to the spool in one transaction, then the sources' acknowledgement
tokens are released and the uplinks woken.

Sealing needs every cluster's attested HPKE key. Keys pinned earlier are
loaded from the spool, so a restart with clusters down keeps sealing; before
the first attestation of every cluster, readings wait in the batcher up to
``batching.max_pending`` and beyond that are refused (counted).

Progress: every step the agent computes ``edge_through``, the timestamp below
which every reading it will ever accept is in the spool already: ``now -
progress.slack_s``, held back by MQTT sources that may still get redeliveries
(:meth:`~gateway.sources.mqtt.MqttSource.progress_bound`) and by readings
still in the batcher. With ``progress.ordered_sensors`` (each sensor's
readings arrive in timestamp order, as they do from one publisher or one
OPC-UA node) a sensor that has just reported lifts its own bound to its
newest timestamp, so when every declared sensor is reporting the edge
follows the slowest of them instead of waiting the full slack; a
``progress.backfill_sensors`` sensor (history) bounds it at its own newest
timestamp however old (:mod:`gateway.eventtime`). Each uplink
lowers it further to its own oldest unsent reading and declares the result
to its cluster in a signed progress notice (:mod:`tecc_contract.progress`);
that is what lets the clusters close a window without ever overtaking a
reading still on its way. A reading that arrives
older than the declared progress is counted in ``gateway_readings_late_total``
(and still sent).

Overflow: when the spool is full, the batch's readings are refused (counted
in ``gateway_readings_refused_total{reason="spool_full"}``) and
``gateway_spool_overflow_alarm`` is set; spooled batches are never evicted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.batcher import Batcher
from gateway.config import GatewayConfig, MqttSourceConfig, OpcuaSourceConfig
from gateway.errors import GatewayError, SpoolError, SpoolFullError
from gateway.eventtime import EventTime
from gateway.http import make_app, start_http
from gateway.ingest import Drained, Ingest, release_acks
from gateway.keys import GatewayKeys
from gateway.manifests import quote_verifier
from gateway.metrics import Metrics
from gateway.reloader import reload_config
from gateway.sealed import resolve
from gateway.sources.modbus import ModbusSource
from gateway.sources.mqtt import MqttSource
from gateway.sources.opcua import OpcuaSource
from gateway.spool import PinnedKey, Spool, pack_tokens
from gateway.uplink import ClusterLink, ProgressHooks, UplinkOptions
from tecc_contract.attestation import ClusterRegistry
from tecc_contract.crashpoint import crash_point
from tecc_contract.envelope import ClusterKey, Sealer
from tecc_contract.errors import ContractError
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite
from tecc_contract.progress import Progress, seal_progress
from tecc_contract.scale import Scale

log = logging.getLogger(__name__)


class Agent:
    """One running gateway; build it with unsealed keys, then ``await run(stop)``."""

    def __init__(
        self,
        cfg: GatewayConfig,
        keys: GatewayKeys,
        *,
        tick_s: float = 0.01,
        now_ns: Callable[[], int] = time.time_ns,
        config_path: Path | None = None,
    ) -> None:
        #: the config as read from the file (before sealed secrets are opened): reloads
        #: compare the new file with this one
        self.file_cfg = cfg
        self.config_path = config_path
        self.reload_wanted = False
        cfg, opcua_keys = resolve(cfg, keys.spool_key)  # sealed secrets, decrypted in memory
        self.cfg = cfg
        self.opcua_keys = opcua_keys
        self._keys = keys
        self._tick = tick_s
        self._now_ns = now_ns
        self.ingest = Ingest(
            cfg.sensors,
            value_bound_bits=cfg.value_bound_bits,
            max_future_skew_s=cfg.progress.max_future_skew_s,
            now_ns=now_ns,
        )
        if wide := cfg.beyond_value_bound():
            log.warning(
                "sensors %s declare ranges reaching beyond what their scale_range holds at "
                "value_bound_bits %s (the analytics policy's bound): their readings there are "
                "rejected as beyond_value_bound, never wrapped; widen scale_range to cover range",
                wide,
                cfg.value_bound_bits,
            )
        self.metrics = Metrics(self.ingest)
        self.metrics.tpm_ok.set(1)
        self.spool = Spool(
            cfg.spool.path,
            gateway_id=cfg.gateway_id,
            n_clusters=len(cfg.clusters),
            spool_key=keys.spool_key,
            max_bytes=cfg.spool.max_bytes,
        )
        self.batcher = Batcher(
            max_readings=cfg.batching.max_readings, max_delay_s=cfg.batching.max_delay_s
        )
        self._pins = self.spool.pins()
        self._sealer: Sealer | None = None
        #: Every sensor's scale this process has known: a reload adds or replaces entries but
        #: never drops one, so readings of a removed sensor still pending in the batcher are
        #: sealed in the scale they were accepted for (not the identity).
        self._scales: dict[str, Scale] = cfg.scales()
        self._build_sealer()
        self._seq = self.spool.last_seq()
        self.spooled_readings = 0
        self._released: list[int] = []
        self.edge_through = 0
        pc = cfg.progress
        self.event_time = EventTime(
            cfg.sensors,
            ordered=pc.ordered_sensors,
            backfill=pc.backfill_sensors,
            backfill_idle_s=pc.backfill_idle_s,
            started=time.monotonic(),
        )
        self.overflow = False
        #: Per-cluster TPM enrolment state for /healthz (set when ``tpm.enrol`` is on).
        self.enrolment: Callable[[], dict[str, Any]] | None = None
        self.mqtt = [self.mqtt_source(c) for c in cfg.mqtt]
        self.opcua = [self.opcua_source(c) for c in cfg.opcua]
        self.modbus = [ModbusSource(c, self.ingest, self.metrics) for c in cfg.modbus]
        self.source_tasks: dict[str, asyncio.Task[None]] = {}  # OPC-UA and Modbus, by name
        self._tg: asyncio.TaskGroup | None = None
        #: The platform verifier; with ``trust.owner_key`` also the release manifest in force.
        self._verifier, self.manifests = quote_verifier(cfg, self.metrics.registry)
        self.links: list[ClusterLink] = []
        #: The clusters' attested identities, kept distinct (ids and keys).
        self._registry = ClusterRegistry()

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file at the next step (:mod:`gateway.reloader`)."""
        self.reload_wanted = True

    @property
    def spool_key(self) -> bytes:
        """The unsealed spool key (sealed secrets of a reloaded config open with it)."""
        return self._keys.spool_key

    def mqtt_source(self, c: MqttSourceConfig) -> MqttSource:
        """A new MQTT source; its ledger starts from the spool's in-flight record."""
        return MqttSource(c, self.ingest, self.metrics, redelivery=self.spool.inflight(c.name))

    def opcua_source(self, c: OpcuaSourceConfig) -> OpcuaSource:
        """A new OPC-UA source for the currently declared sensors."""
        return OpcuaSource(
            c,
            self.ingest,
            self.metrics,
            sensors=set(self.cfg.sensors),
            state_dir=self.cfg.state_dir,
            gateway_id=self.cfg.gateway_id,
            private_key=self.opcua_keys.get(c.name),
        )

    def start_task(self, name: str, source: OpcuaSource | ModbusSource) -> None:
        """Run a polled/subscribed source in the agent's task group (after ``run`` began)."""
        if self._tg is None:
            raise GatewayError("start_task before run")
        self.source_tasks[name] = self._tg.create_task(source.run())

    def _build_sealer(self) -> None:
        if len(self._pins) < len(self.cfg.clusters) or self._sealer is not None:
            return
        self._sealer = Sealer(
            gateway_id=self.cfg.gateway_id,
            signing_key=self._keys.identity,
            clusters=[
                ClusterKey(p.cluster, KemSuite(p.suite), p.public_key) for p in self._pins.values()
            ],
            columns=tuple(Column(c) for c in self.cfg.columns),
            scales=self._scales,
        )
        log.info("all %d cluster keys known; sealing enabled", len(self._pins))

    def set_scales(self, scales: dict[str, Scale]) -> None:
        """The sensors' scales after a config reload, merged into those known (never dropped)."""
        self._scales |= scales
        if self._sealer is not None:
            self._sealer.set_scales(self._scales)

    def _on_pin(self, key: PinnedKey) -> None:
        if self._pins.get(key.cluster, key) != key:
            self._sealer = None  # a rotated cluster key: seal the next batches to the new one
        self._pins[key.cluster] = key
        self._build_sealer()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness and a summary for ``/healthz``."""
        details = {
            "gateway_id": self.cfg.gateway_id,
            "tpm": "unsealed",
            "sealing": self._sealer is not None,
            "spool_overflow": self.overflow,
            "last_seq": self._seq,
            "backlog": len(self.batcher) + self.ingest.pending(),
            "backfilling": self.event_time.backfilling(time.monotonic()),
            "sources": {
                **{s.name: {"connected": s.connected} for s in self.mqtt},
                **{
                    s.name: {"connected": s.connected, "subscribed": s.subscribed}
                    for s in self.opcua
                },
                **{s.name: {"connected": s.connected, "polls": s.polls} for s in self.modbus},
            },
            "clusters": {
                str(link.index): {
                    "attested": link.attested_at is not None,
                    "depth": self.spool.depth(link.index),
                    "progress_s": link.through_ns / 1e9,
                    "last_error": link.last_error,
                    "endpoint": link.endpoints.url,
                    "endpoints": {
                        e.url: {"up": e.up, "held_back": e.why or None} for e in link.endpoints.all
                    },
                }
                for link in self.links
            },
        }
        if self.manifests is not None:  # the owner-signed release manifest in force
            details["release_manifest"] = self.manifests.summary()
        if self.enrolment is not None:
            details["enrolment"] = self.enrolment()
        return not self.overflow, details

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then flush what can be flushed and return."""
        timeout = aiohttp.ClientTimeout(total=30, connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.links = [
                ClusterLink(
                    c,
                    spool=self.spool,
                    verifier=self._verifier,
                    metrics=self.metrics,
                    session=session,
                    on_pin=self._on_pin,
                    options=UplinkOptions(
                        gateway_id=self.cfg.gateway_id,
                        expected_suite=self.cfg.kem_suite,
                        notice_interval_s=self.cfg.progress.interval_s,
                    ),
                    progress=ProgressHooks(lambda: self.edge_through, self._notice),
                    registry=self._registry,
                    before_verify=(
                        None
                        if self.manifests is None
                        else functools.partial(self.manifests.refresh, session)
                    ),
                )
                for c in self.cfg.clusters
            ]
            try:
                runner = await start_http(
                    make_app(self.metrics, self.health), self.cfg.http.host, self.cfg.http.port
                )
            except OSError as exc:
                raise GatewayError(
                    f"cannot listen on {self.cfg.http.host}:{self.cfg.http.port} ({exc}); "
                    "free the port or change http.port"
                ) from exc
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    tasks = [tg.create_task(link.run()) for link in self.links]
                    for o in self.opcua:
                        self.start_task(o.name, o)
                    for mb in self.modbus:
                        self.start_task(mb.name, mb)
                    tasks.append(tg.create_task(self._gauges_loop()))
                    if self.manifests is not None:  # new manifests between attestations too
                        tasks.append(tg.create_task(self.manifests.follow(session, self.links)))
                    batch_task = tg.create_task(self._batch_loop(stop))
                    for m in self.mqtt:
                        m.start()
                    await batch_task
                    for m in self.mqtt:
                        m.stop()
                    for t in [*tasks, *self.source_tasks.values()]:
                        t.cancel()
            finally:
                await runner.cleanup()
                self.spool.close()
        log.info("agent stopped at seq %d", self._seq)

    async def _batch_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self._tick)
            if self.reload_wanted:
                self.reload_wanted = False
                await reload_config(self)
            await self._step(time.monotonic())
        await self._step(time.monotonic(), final=True)

    async def _step(self, now: float, *, final: bool = False) -> None:
        now_ns = self._now_ns()
        pc = self.cfg.progress
        bounds = [
            m.progress_bound(now_ns, int(pc.settle_s * 1e9), int(pc.max_hold_s * 1e9))
            for m in self.mqtt
        ]
        drained = self.ingest.drain()
        declared = max((link.through_ns for link in self.links), default=0)
        if drained.timestamps and min(drained.timestamps) < declared:
            late = sum(1 for t in drained.timestamps if t < declared)
            self.metrics.late.inc(late)
            log.warning(
                "%d readings arrived older than the progress already declared (%.3f s); "
                "they are sent but may miss their window: raise progress.slack_s if this "
                "repeats",
                late,
                declared / 1e9,
            )
        self.event_time.observe(drained.sensors, drained.timestamps, now)
        backlog = len(self.batcher) + len(drained)
        if self._sealer is None and backlog > self.cfg.batching.max_pending:
            self._refuse(drained, "backlog_full")
        else:
            self.batcher.add(drained, now)
        if self._sealer is not None:
            while self.batcher.due(now) or (final and len(self.batcher)):
                await self._cut(now)
        self._advance(now_ns, bounds, now)

    def _advance(self, now_ns: int, bounds: list[int | None], now: float) -> None:
        """Move ``edge_through`` forward (see the module docstring); never backwards."""
        pc = self.cfg.progress
        limit = min([now_ns, *(b for b in bounds if b is not None)])
        if limit == 0:
            return  # an MQTT session may still hold the previous run's backlog: no claim
        # Per sensor: the floor, its newest timestamp, or (backfill) its own event time.
        through = self.event_time.through(limit - int(pc.slack_s * 1e9), now)
        if self.batcher.min_ts is not None:
            through = min(through, self.batcher.min_ts)
        through = min(through, limit)  # never a claim ahead of the gateway's own clock
        if through > self.edge_through:
            self.edge_through = through
            self.metrics.through.set(through / 1e9)

    def _notice(self, cluster_id: str, through_ns: int, sent_ns: int) -> bytes:
        return seal_progress(
            Progress(self.cfg.gateway_id, cluster_id, through_ns, sent_ns), self._keys.identity
        )

    def _refuse(self, drained: Drained, reason: str) -> None:
        if len(drained):
            self.metrics.refused.labels(reason).inc(len(drained))
            log.error("refusing %d readings: %s", len(drained), reason)
        release_acks(drained.acks)

    async def _cut(self, now: float) -> None:
        assert self._sealer is not None
        batch = self.batcher.take(now)
        tokens: dict[str, list[tuple[int, int]]] = {}
        for target, tok in batch.acks:
            tokens.setdefault(target.name, []).append(tok)
        if batch.count:
            seq = self._seq + 1
            created = self._now_ns()
            try:
                frames = await asyncio.to_thread(
                    self._sealer.seal, seq, batch.segments, created_ns=created
                )
                await asyncio.to_thread(
                    self.spool.append,
                    seq,
                    created,
                    batch.count,
                    frames,
                    inflight={name: pack_tokens(t) for name, t in tokens.items()},
                    released=self._released,
                    min_ts=min(int(seg.timestamps_ns[0]) for seg in batch.segments),
                )
            except (SpoolError, ContractError) as exc:
                self._refuse_batch(batch.count, exc)
                release_acks(batch.acks)
                return
            crash_point("gateway.after_spool_commit")  # test hook, inert in production
            self._seq = seq
            self.spooled_readings += batch.count
            self._released = [seq]
            if self.overflow:
                log.warning("spool has room again; accepting readings")
            self.overflow = False
            self.metrics.spool_overflow.set(0)
            self.metrics.batches.inc()
            for link in self.links:
                link.wake.set()
        release_acks(batch.acks)

    def _refuse_batch(self, count: int, exc: Exception) -> None:
        """Count a batch that could not be spooled; never evict what is spooled already."""
        if isinstance(exc, ContractError):
            reason = "seal_error"
            log.error("refusing %d readings, sealing failed: %s", count, exc)
        else:
            reason = "spool_full" if isinstance(exc, SpoolFullError) else "spool_error"
            if not self.overflow:
                log.error("spool refuses batches (%s), refusing new readings: %s", reason, exc)
            self.overflow = True
            self.metrics.spool_overflow.set(1)
        self.metrics.refused.labels(reason).inc(count)

    async def _gauges_loop(self) -> None:
        while True:
            now = self._now_ns()
            m = self.metrics
            for c in self.cfg.clusters:
                label = str(c.index)
                m.spool_depth.labels(label).set(self.spool.depth(c.index))
                oldest = await asyncio.to_thread(self.spool.oldest_created_ns, c.index)
                m.spool_age.labels(label).set(0 if oldest is None else (now - oldest) / 1e9)
            m.spool_bytes.set(self.spool.bytes_used)
            m.backlog.set(len(self.batcher) + self.ingest.pending())
            await asyncio.sleep(1.0)
