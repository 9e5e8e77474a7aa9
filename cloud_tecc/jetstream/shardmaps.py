"""The party's shard map in JetStream KV (``tecc_shards/map``): store, and the follower.

:class:`ShardMapStore` loads, creates (first start: from the config's
``shards:``) and saves the record (:mod:`cloud_tecc.party.maprecord`) with a
compare-and-set on the key's revision and versions that only go up.

:class:`MapFollower` is what frontends and workers run: it connects to the
party's JetStream, creates the map if it is absent, then polls the key every
``poll_s`` and applies each new revision that builds for this party's config
and policy. A record that does not (malformed JSON, ``shards: 0``, an override
to a shard ≥ K, another K than the config's, an override splitting a fleet
class) is refused: logged with the reason, counted in
``tecc_shard_map_rejected_total{reason}``, shown in ``/healthz``; the version
in use stays (a process that has none yet routes nothing: a frontend answers
503, a worker computes no epoch). Nothing crashes. A frontend routes only by a
map it read within :data:`FRESH_S` (:meth:`MapFollower.fresh`), so one that was
cut off from the KV cannot route by a version that was replaced meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.config import JetStreamConfig, PartyConfig
from cloud_tecc.jetstream.client import party_client
from cloud_tecc.jetstream.kv import (
    SHARD_MAP_KEY,
    SHARDS_BUCKET,
    TRANSIENT,
    Bucket,
    KVError,
    RevisionChangedError,
    open_bucket,
)
from cloud_tecc.jetstream.sharelog import Overloaded
from cloud_tecc.party.maprecord import (
    ShardMapError,
    ShardMapRecord,
    build_maps,
    decode_record,
    initial_record,
)
from cloud_tecc.party.shardmap import ShardMaps
from cloud_tecc.service.health import ShardMapHealth
from cloud_tecc.tasks import check_cancelled

log = logging.getLogger("cloud_tecc.jetstream.shardmaps")
WHERE: Final = f"{SHARDS_BUCKET}/{SHARD_MAP_KEY}"
REASONS: Final = ("malformed", "shards", "invalid")
#: A frontend publishes only with a map read this recently (the poll is every second;
#: a KV leader election in a 3-node cluster takes a few seconds).
FRESH_S: Final = 10.0
_RETRY_S: Final = 0.5


class ShardMapStore:
    """The shard map in ``tecc_shards``: load, create if absent, save (versioned CAS)."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext, *, replicas: int = 1) -> ShardMapStore:
        """The store over the party's ``tecc_shards`` bucket (created if missing)."""
        return cls(await open_bucket(js, SHARDS_BUCKET, replicas=replicas))

    async def raw(self) -> tuple[bytes, int] | None:
        """The stored bytes and revision, or None before the first save (or after a delete)."""
        stored = await self.bucket.get(SHARD_MAP_KEY)
        if stored is None or stored.value is None:
            return None
        return stored.value, stored.revision

    async def load(self) -> tuple[ShardMapRecord, int] | None:
        """The stored record and its revision; ShardMapError when it does not decode."""
        got = await self.raw()
        if got is None:
            return None
        return decode_record(got[0], where=WHERE), got[1]

    async def ensure(self, shards: int) -> tuple[ShardMapRecord, int]:
        """The stored record, created as version 1 from ``shards`` when absent."""
        while True:
            got = await self.load()
            if got is not None:
                return got
            record = initial_record(shards)
            try:
                rev = await self.bucket.write(
                    SHARD_MAP_KEY, msgspec.json.encode(record), expected=0
                )
            except RevisionChangedError:
                continue  # another frontend or worker created it first: read theirs
            log.info("shard map created from the config: version 1, %d shards", shards)
            return record, rev

    async def save(self, record: ShardMapRecord, *, expected: int) -> int:
        """Store ``record`` over revision ``expected`` if its version is above the stored one.

        RevisionChangedError when the key moved on since it was read; KVError
        when the version does not go up.
        """
        got = await self.raw()
        if got is not None:
            try:
                current = decode_record(got[0], where=WHERE)
            except ShardMapError:
                current = None  # a broken record may be overwritten by a valid one
            if current is not None and record.version <= current.version:
                raise KVError(
                    f"shard map version {record.version} is not above the stored "
                    f"{current.version}; write version {current.version + 1}"
                )
        return await self.bucket.write(
            SHARD_MAP_KEY, msgspec.json.encode(record), expected=expected
        )


class MapFollower:
    """The shard map a frontend or worker routes and agrees by (see the module docstring)."""

    def __init__(
        self,
        *,
        cfg: JetStreamConfig,
        state_dir: Path,
        shards: int,
        policy: AnalyticsPolicy,
        registry: CollectorRegistry,
        name: str,
        poll_s: float = 1.0,
    ) -> None:
        self.cfg, self.state_dir, self.shards, self.policy = cfg, state_dir, shards, policy
        self.name, self.poll_s = name, poll_s
        self.maps: ShardMaps | None = None
        self.error = ""
        self._seen = 0  # the revision last looked at
        #: monotonic time of the last successful read of the key (0: never)
        self.checked = 0.0
        self.nc: Client | None = None
        self.rejected = Counter(
            "tecc_shard_map_rejected",
            "Stored shard map revisions not applied, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.version = Gauge(
            "tecc_shard_map_version", "Version of the shard map in use (0: none)", registry=registry
        )

    @classmethod
    def of_party(
        cls, cfg: PartyConfig, js: JetStreamConfig, registry: CollectorRegistry, name: str
    ) -> MapFollower:
        """The follower of party ``cfg``'s map on its JetStream ``js`` (``cfg.jetstream``)."""
        return cls(
            cfg=js,
            state_dir=cfg.service.state_dir,
            shards=cfg.shards,
            policy=cfg.service.policy,
            registry=registry,
            name=name,
        )

    async def run(self) -> None:
        """Connect, create the map if absent, then follow it for ever."""
        self.nc = await party_client(self.cfg, self.state_dir, self.name)
        js = self.nc.jetstream(timeout=5.0)
        store: ShardMapStore | None = None
        while store is None:
            try:
                store = await ShardMapStore.open(js, replicas=self.cfg.replicas)
                await store.ensure(self.shards)
            except ShardMapError:
                pass  # a broken record is there: the loop below reports it, and follows
            except (*TRANSIENT, KVError) as exc:
                store = None
                log.warning("shard map bucket not ready (%s); retrying", exc)
                await asyncio.sleep(_RETRY_S)
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                got = await store.raw()
                self.checked = time.monotonic()
            except TRANSIENT:
                got = None
            if got is not None and got[1] != self._seen:
                self._seen = got[1]
                self.apply(got[0])
            await asyncio.sleep(self.poll_s)

    def apply(self, raw: bytes) -> bool:
        """Use the record ``raw`` if it builds for this party; else refuse it (kept: the old)."""
        try:
            record = decode_record(raw, where=WHERE)
        except ShardMapError as exc:
            return self._refuse("malformed", str(exc))
        try:
            maps = build_maps(record, shards=self.shards, policy=self.policy, where=WHERE)
        except (ShardMapError, ValueError) as exc:
            reason = "shards" if record.shards != self.shards else "invalid"
            return self._refuse(reason, str(exc))
        old = self.maps
        self.maps, self.error = maps, ""
        self.version.set(maps.current.version)
        if old is None or old.current.id != maps.current.id:
            log.warning(
                "shard map version %d (%s) in use, effective from %d",
                maps.current.version,
                maps.current.id,
                maps.current.effective_ns,
            )
        return True

    def _refuse(self, reason: str, detail: str) -> bool:
        self.rejected.labels(reason).inc()
        self.error = detail
        kept = f"; still using version {self.maps.current.version}" if self.maps else ""
        log.error("shard map not applied: %s%s", detail, kept)
        return False

    def fresh(self, max_age_s: float) -> ShardMaps:
        """The map in use if the key was read within ``max_age_s``; else Overloaded (503).

        A frontend routes only by a map it confirmed recently: one that was cut off
        from its JetStream (and so may have missed a new version) publishes nothing
        until its next successful read.
        """
        if self.maps is None:
            why = self.error or "not read from the party's JetStream yet"
            raise Overloaded(f"no usable shard map: {why}")
        age = time.monotonic() - self.checked
        if age > max_age_s:
            raise Overloaded(f"shard map not confirmed for {age:.1f} s (limit {max_age_s} s)")
        return self.maps

    def map_id(self, ts_ns: int) -> str | None:
        """The id of the version in force at ``ts_ns`` (None: no usable map yet)."""
        return None if self.maps is None else self.maps.at(ts_ns).id

    def health(self) -> ShardMapHealth:
        """For ``/healthz``: the version in use, from when, and the last refusal."""
        cur = None if self.maps is None else self.maps.current
        return ShardMapHealth(
            version=cur.version if cur else None,
            id=cur.id if cur else None,
            effective_ns=cur.effective_ns if cur else None,
            error=self.error or None,
        )

    async def close(self) -> None:
        """Close the connection."""
        if self.nc is not None:
            await self.nc.close()
