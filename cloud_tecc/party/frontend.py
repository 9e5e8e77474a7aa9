"""A stateless ingest frontend of one party: verify, open, split by shard, publish to the log.

``tecc-cluster ingest --config party.yaml`` (the party's own config, with
``jetstream:``) runs one; a party runs any number. Each serves the gateways'
uplink exactly like the all-in-one party (HTTPS with the party's enclave TLS
key, the same quote, ``/attestation``, ``/healthz``, ``/metrics``, the
enrolment endpoints):

* ``POST /v1/batches``: :meth:`Ingestor.prepare` in a thread pool, the opened
  batch split into one part per shard (:func:`~cloud_tecc.party.shardmap.split_row`,
  by the party's shard map in its KV, followed live:
  :class:`~cloud_tecc.jetstream.shardmaps.MapFollower`; 503 while there is none),
  every part published to ``TECC_SHARES``; the signed ack (same JSON as the
  party's) only after every part's PubAck. All parts already in the stream →
  ``"duplicate"`` with an ack; a part stored under the same (gateway, seq)
  with another frame's digest → 409 ``replay``.
* ``POST /v1/progress``: checked like the party's, then published to
  ``TECC_PROGRESS`` (the shard workers read it); 200 ``noted`` after the PubAck.

When JetStream refuses (stream full, no quorum, unreachable, timeout) the
answer is 503 with ``Retry-After`` and ``{"status": "rejected", "reason":
"overloaded"}``, counted in ``tecc_ingest_rejected_total{reason="overloaded"}``
(``tecc_progress_rejected_total`` for notices); the gateway keeps the frame.

The frontend keeps no state of its own: it reads the party's sealed keys from
its state dir (provisioned there like a worker's), and the gateway enrolment
registry and pending challenges from the party's JetStream KV
(:mod:`cloud_tecc.jetstream.enrolkv`, :mod:`cloud_tecc.jetstream.enrolnonces`):
a revocation or suspension written anywhere in the party is applied here
live, and a challenge issued here may be finished at any other frontend.
Until the first snapshot of the registry is loaded, batches and notices are
answered 503 (``overloaded``) with ``Retry-After``.

The HPKE keys come from the party's key ring in its KV
(:mod:`cloud_tecc.jetstream.hpkekv`), sealed under the party's sealing key:
every frontend opens envelopes under the ring's current and (during
``hpke_overlap_s``) previous key and quotes the current one with the claim
``hpke_prev``; with ``hpke_rotation_s`` > 0 whichever frontend first finds the
ring due writes the next version and the others adopt it from their watch.
Until a ring is in use, ``/attestation`` and batches answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from cloud_tecc.config import PartyConfig
from cloud_tecc.enclave.hpkering import HpkeRing, RingSealer
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.errors import CloudConfigError, IngestError
from cloud_tecc.jetstream.enrolkv import KvRegistry
from cloud_tecc.jetstream.hpkekv import RingFollower
from cloud_tecc.jetstream.shardmaps import FRESH_S, MapFollower
from cloud_tecc.jetstream.sharelog import (
    MAX_PART_BYTES,
    MalformedPartError,
    Overloaded,
    Published,
    ShareLog,
    decode_part,
    encode_part,
)
from cloud_tecc.party.shardmap import split_row
from cloud_tecc.party.store import BatchRow, InsertResult
from cloud_tecc.party.uplink import MAX_NOTICE, UplinkService
from cloud_tecc.service.health import PartyHealth, to_json

log = logging.getLogger("cloud_tecc.party.frontend")


class IngestFrontend(UplinkService):
    """One ingest frontend of a party in the JetStream layout."""

    def __init__(self, cfg: PartyConfig, enclave: Enclave) -> None:
        super().__init__(cfg, enclave)
        if cfg.jetstream is None:
            raise CloudConfigError(
                "jetstream: is missing: an ingest frontend publishes to the party's log; "
                "add a jetstream: section (servers, or embedded: true) to the party config"
            )
        self.js_cfg = cfg.jetstream
        self.shard_map = MapFollower.of_party(
            cfg, cfg.jetstream, self.registry, f"ingest-map-{cfg.service.service_id}"
        )
        self.log: ShareLog | None = None
        self.ring = RingFollower(
            sealer=RingSealer.of(self.enclave),
            initial=HpkeRing.of_keys(self.enclave.keys, time.time_ns()),
            rotation_s=cfg.hpke_rotation_s,
            overlap_s=cfg.hpke_overlap_s,
            registry=self.registry,
            on_change=self._use_ring,
        )
        self.rejected.labels("overloaded")
        self.notices_rejected.labels("overloaded")
        self.app.router.add_post("/v1/batches", self._ingest)
        self.app.router.add_post("/v1/progress", self._progress)

    async def on_start(self) -> None:
        """Connect to the log in the background (503 until connected)."""
        self.spawn(self._connect(), "share-log")
        name = f"ingest-hpke-{self.cfg.service_id}"
        self.spawn(self.ring.run(self.js_cfg, self.cfg.state_dir, name), "hpke-ring")
        self.spawn(self.shard_map.run(), "shard-map")
        self.spawn(self.run_enrolment_kv(), "enrolment-kv")

    async def _connect(self) -> None:
        name = f"ingest-{self.cfg.service_id}"
        sharelog = await ShareLog.open(self.js_cfg, self.cfg.state_dir, name)
        if isinstance(self.gateways, KvRegistry):  # admit nothing before it is loaded
            await self.gateways.wait_ready()
        await self.ring.ready.wait()  # open and quote only by the party's ring
        self.log = sharelog
        log.info("publishing to the share log (%d shards)", self.pcfg.shards)

    async def on_stop(self) -> None:
        """Close the log connection, then the shared resources."""
        if self.log is not None:
            await self.log.close()
        await self.shard_map.close()
        await self.ring.close()
        await super().on_stop()

    def _use_ring(self, ring: HpkeRing) -> None:
        """Quote and open by ``ring`` from now on (called on every new version, and when
        its previous key's overlap ends)."""
        self.enclave = replace(self.enclave, keys=ring.applied_to(self.enclave.keys))
        self.ingestor = self._make_ingestor(time.time_ns())

    async def _attestation(self, request: web.Request) -> web.Response:
        if not self.ring.ready.is_set():  # no quote of a key the party may have replaced
            self.errors.labels("attestation", "no_ring").inc()
            return web.json_response(
                {"error": "the party's HPKE key ring is not loaded yet; retry"},
                status=503,
                headers={"Retry-After": "1"},
            )
        return await super()._attestation(request)

    def health(self) -> dict[str, Any]:
        """Health with the log connection (:class:`PartyHealth` with ``frontend``)."""
        base = super().health()
        return to_json(
            PartyHealth(
                status=base["status"],
                role=base["role"],
                service_id=base["service_id"],
                party=self.pcfg.party,
                frontend=True,
                shards=self.pcfg.shards,
                log_connected=self.log is not None and self.log.nc.is_connected,
                shard_map=self.shard_map.health(),
                enrolment={r.gateway_id: r.state for r in self.gateways.records()},
                enrolment_sync_age_s=self._enrolment_age(),
                hpke=self.ring.health(),
            )
        )

    def _sharelog(self) -> ShareLog:
        if self.log is None:
            raise Overloaded("not connected to the share log yet")
        return self.log

    def _overloaded(self, exc: Overloaded, counter: str) -> web.Response:
        if counter == "batches":
            self.rejected.labels("overloaded").inc()
        else:
            self.notices_rejected.labels("overloaded").inc()
        log.warning("%s refused (overloaded): %s", counter, exc)
        return web.json_response(
            {"status": "rejected", "reason": "overloaded"},
            status=503,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    async def _ingest(self, request: web.Request) -> web.Response:
        frame = await request.read()
        try:
            row = await self._prepare(frame)
            outcome = await self._publish(row)
        except IngestError as exc:
            return self.refuse_batch(exc)
        except Overloaded as exc:
            return self._overloaded(exc, "batches")
        if outcome == InsertResult.ACCEPTED:
            self.readings.inc(row.count)
        return self.ack_response(row, outcome, stored=outcome == InsertResult.ACCEPTED)

    async def _publish(self, row: BatchRow) -> str:
        """Every shard part in the log; ``accepted``, or ``duplicate`` if all were there."""
        parts = {
            k: encode_part(p, k) for k, p in split_row(row, self.shard_map.fresh(FRESH_S)).items()
        }
        big = max(len(d) for d in parts.values())
        if big > MAX_PART_BYTES:
            raise IngestError(
                "layout",
                f"batch {row.seq} of {row.gateway!r}: a shard part of {big} bytes exceeds the "
                f"log's message limit ({MAX_PART_BYTES}); lower the gateway's batch size",
            )
        sharelog = self._sharelog()
        acks: list[Published] = await asyncio.gather(
            *(sharelog.publish_encoded(row.gateway, row.seq, k, d) for k, d in parts.items())
        )
        for ack in acks:
            if ack.duplicate and not await self._same_frame(sharelog, ack.seq, row):
                raise IngestError(
                    "replay",
                    f"batch {row.seq} of {row.gateway!r} was already stored with different content",
                )
        return InsertResult.DUPLICATE if all(a.duplicate for a in acks) else InsertResult.ACCEPTED

    @staticmethod
    async def _same_frame(sharelog: ShareLog, seq: int, row: BatchRow) -> bool:
        try:
            _, stored = decode_part(await sharelog.stored_part(seq))
        except MalformedPartError:
            return False
        return stored.digest == row.digest

    async def _progress(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_NOTICE)
        notice = self.check_notice(body, time.time_ns())
        if isinstance(notice, web.Response):
            return notice
        try:
            await self._sharelog().publish_progress(notice.gateway_id, body)
        except Overloaded as exc:
            return self._overloaded(exc, "progress")
        self.notices.inc()
        return web.json_response({"status": "noted"})
