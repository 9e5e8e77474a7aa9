"""The party's HPKE key ring in its JetStream KV: every ingest frontend follows, one rotates.

Bucket ``tecc_hpke`` (history 1, the party's replica count), key ``ring``,
value one sealed :class:`~cloud_tecc.enclave.hpkering.RingWire` (no plaintext
key in the KV). :class:`RingFollower` is what each frontend runs:

- **Start.** Read the ring; when absent, write version 1 from the process's
  own sealed keys (the party's provisioned key) with a create-only
  compare-and-set: of several frontends starting at once one creates it and
  the others adopt it. Until a ring is in use the frontend answers
  ``/attestation`` and batches 503 (so no gateway pins a key the party has
  already replaced).
- **Follow.** A KV watch on the key applies every new revision (with a
  read of the key every ``check_s`` in case the watch was lost). A value
  that does not decode, open under the party's sealing key, match its
  readable fields or the configured suite, or whose version is not above the
  one in use (a rollback), is refused: logged, counted in
  ``tecc_hpke_ring_rejected_total{reason}``; the last good ring stays.
- **Rotate.** With ``hpke_rotation_s`` > 0, once the ring in use is that old
  a frontend writes the next version (fresh key; the current becomes
  previous) over the revision it read. JetStream's compare-and-set lets
  exactly one writer of that revision through; a loser backs off
  (:func:`~cloud_tecc.jetstream.kv.contention_pause`), re-reads and adopts
  the winner's ring, which is not due any more (``tecc_hpke_ring_conflicts_total``).
  ``tecc_hpke_rotations_total`` counts the rotations this process wrote,
  ``tecc_hpke_ring_adopted_total`` every new version it took into use,
  ``tecc_hpke_ring_version`` the one in use.

The previous key keeps opening envelopes until ``since_ns + hpke_overlap_s``
of the current key; :attr:`RingFollower.on_change` is called on every new
ring and once when that overlap ends, so the frontend rebuilds its opener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.enclave.hpkering import REASONS, HpkeRing, RingError, RingSealer
from cloud_tecc.jetstream.client import party_client
from cloud_tecc.jetstream.kv import (
    TRANSIENT,
    Bucket,
    KVError,
    RevisionChangedError,
    contention_pause,
    open_bucket,
)
from cloud_tecc.service.health import HpkeRingHealth
from cloud_tecc.tasks import check_cancelled

log = logging.getLogger("cloud_tecc.jetstream.hpkekv")
HPKE_BUCKET: Final = "tecc_hpke"
RING_KEY: Final = "ring"
WHERE: Final = f"{HPKE_BUCKET}/{RING_KEY}"
_TRIES: Final = 8
_RETRY_S: Final = 0.5


class RingFollower:
    """The HPKE ring one frontend opens envelopes and quotes by (see the module docstring)."""

    def __init__(
        self,
        *,
        sealer: RingSealer,
        initial: HpkeRing,
        rotation_s: float,
        overlap_s: float,
        registry: CollectorRegistry,
        on_change: Callable[[HpkeRing], None] = lambda _ring: None,
        check_s: float = 5.0,
    ) -> None:
        self.sealer, self.initial = sealer, initial
        self.rotation_ns, self.overlap_ns = int(rotation_s * 1e9), int(overlap_s * 1e9)
        self.on_change, self.check_s = on_change, check_s
        self.ring: HpkeRing | None = None
        self.bucket: Bucket | None = None
        self.ready = asyncio.Event()
        self.error = ""
        self._seen = 0  # the KV revision last looked at
        self._wake = asyncio.Event()
        self.nc: Client | None = None
        self.rejected = Counter(
            "tecc_hpke_ring_rejected",
            "Stored HPKE ring values refused (the last good ring stays), by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.rotations = Counter(
            "tecc_hpke_rotations", "HPKE key rotations this process wrote", registry=registry
        )
        self.conflicts = Counter(
            "tecc_hpke_ring_conflicts",
            "Ring writes that lost the compare-and-set to another frontend's",
            registry=registry,
        )
        self.adopted = Counter(
            "tecc_hpke_ring_adopted", "New HPKE ring versions taken into use", registry=registry
        )
        self.version = Gauge(
            "tecc_hpke_ring_version", "Version of the HPKE ring in use (0: none)", registry=registry
        )

    # -- applying a stored value ---------------------------------------------------------

    def apply(self, raw: bytes, revision: int) -> bool:
        """Use the ring of ``raw`` if it opens and is newer; else refuse it (counted)."""
        self._seen = max(self._seen, revision)
        try:
            ring = self.sealer.decode(raw, WHERE)
        except RingError as exc:
            return self._refuse(exc.reason, str(exc))
        return self.use(ring)

    def use(self, ring: HpkeRing) -> bool:
        """Take ``ring`` into use if it is above the version in use (same one: nothing)."""
        old = self.ring
        if old is not None and ring.version <= old.version:
            if ring.version == old.version and ring.current_public == old.current_public:
                return False  # our own write coming back through the watch
            return self._refuse(
                "stale",
                f"{WHERE} holds version {ring.version}, not above version {old.version} in "
                "use (a rolled-back value)",
            )
        self.ring, self.error = ring, ""
        self.version.set(ring.version)
        if old is not None:
            self.adopted.inc()
            log.warning(
                "HPKE ring version %d in use (key %s…, previous opens for %.0f s)",
                ring.version,
                ring.digest[:12],
                self.overlap_ns / 1e9,
            )
        self.on_change(ring)
        self.ready.set()
        self._wake.set()
        return True

    def _refuse(self, reason: str, detail: str) -> bool:
        self.rejected.labels(reason).inc()
        self.error = detail
        kept = f"; still using version {self.ring.version}" if self.ring else ""
        log.error("HPKE ring not applied: %s%s", detail, kept)
        return False

    # -- the KV ----------------------------------------------------------------------------

    async def open(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        """Open (create) the bucket and load the ring, creating version 1 when absent.

        A stored ring that is refused leaves :attr:`ring` None (the frontend answers
        503) until the watch brings a good one: the provisioned key is never used
        in place of the party's ring, which may have rotated past it.
        """
        bucket = await open_bucket(js, HPKE_BUCKET, replicas=replicas)
        await self._load(bucket)
        self.bucket = bucket

    async def _load(self, bucket: Bucket) -> None:
        for attempt in range(_TRIES):
            stored = await bucket.get(RING_KEY)
            if stored is not None and stored.value is not None:
                self.apply(stored.value, stored.revision)  # refused: no ring until a good one
                return
            expected = 0 if stored is None else stored.revision  # absent, or a delete marker
            value = self.sealer.encode(self.initial)
            try:
                rev = await bucket.write(RING_KEY, value, expected=expected)
            except RevisionChangedError:  # another frontend created it first: read theirs
                self.conflicts.inc()
                await contention_pause(attempt)
                continue
            self._seen = rev
            log.info("HPKE ring created: version %d", self.initial.version)
            self.use(self.initial)
            return
        raise KVError(f"{WHERE} kept changing while it was created")

    async def rotate_once(self, now_ns: int) -> bool:
        """Write the next ring if the stored one is due; whether this process rotated."""
        bucket = self._bucket()
        for attempt in range(_TRIES):
            stored = await bucket.get(RING_KEY)
            if stored is not None and stored.value is not None and stored.revision != self._seen:
                self.apply(stored.value, stored.revision)
            ring = self.ring
            if ring is None or not self.due(ring, now_ns):
                return False
            following = ring.rotated(now_ns)
            try:
                rev = await bucket.write(
                    RING_KEY,
                    self.sealer.encode(following),
                    expected=0 if stored is None else stored.revision,
                )
            except RevisionChangedError:  # another frontend rotated first: adopt theirs
                self.conflicts.inc()
                await contention_pause(attempt)
                continue
            self._seen = rev
            self.rotations.inc()
            log.info("HPKE key rotated: ring version %d written", following.version)
            self.use(following)
            return True
        return False

    def due(self, ring: HpkeRing, now_ns: int) -> bool:
        """Whether ``ring`` is old enough to be rotated."""
        return self.rotation_ns > 0 and now_ns >= ring.since_ns + self.rotation_ns

    def in_overlap(self, now_ns: int) -> bool:
        """Whether the ring's previous key still opens envelopes at ``now_ns``."""
        ring = self.ring
        return bool(ring and ring.previous_public and now_ns < ring.since_ns + self.overlap_ns)

    def _bucket(self) -> Bucket:
        if self.bucket is None:
            raise KVError(f"{WHERE}: not connected to the party's JetStream yet")
        return self.bucket

    # -- the loops ---------------------------------------------------------------------------

    async def run(self, cfg: JetStreamConfig, state_dir: Path, name: str) -> None:
        """Connect, load or create the ring, then follow (and rotate) for ever."""
        self.nc = await party_client(cfg, state_dir, name, "the HPKE key ring")
        js = self.nc.jetstream(timeout=5.0)
        while self.bucket is None:  # (a refused stored ring: wait for a good one below)
            try:
                await self.open(js, replicas=cfg.replicas)
            except (*TRANSIENT, KVError) as exc:
                log.warning("HPKE ring bucket not ready (%r); retrying", exc)
                await asyncio.sleep(_RETRY_S)
        await asyncio.gather(self._follow(js), self._timer())

    async def _follow(self, js: JetStreamContext) -> None:
        """Apply every revision of the key (KV watch), re-reading it every ``check_s``."""
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            watcher: Any = None
            try:
                kv = await js.key_value(HPKE_BUCKET)
                watcher = await kv.watch(RING_KEY)
                while True:
                    check_cancelled()
                    try:
                        entry = await watcher.updates(timeout=self.check_s)
                    except nats.errors.TimeoutError:
                        await self._check()
                        continue
                    if entry is None:  # the watch's initial value is delivered
                        continue
                    if entry.operation is not None:  # a delete or purge
                        await self._deleted()
                        continue
                    if (entry.revision or 0) > self._seen:
                        self.apply(entry.value or b"", entry.revision or 0)
            except (*TRANSIENT, KVError, nats.js.errors.Error) as exc:
                log.warning("HPKE ring watch interrupted (%r); restarting it", exc)
                await asyncio.sleep(_RETRY_S)
            finally:
                if watcher is not None:
                    with contextlib.suppress(*TRANSIENT):
                        await watcher.stop()

    async def _deleted(self) -> None:
        """The key was deleted: keep the ring in use; without one, write version 1.

        A frontend whose stored ring was unusable at its start holds none; the
        operator's remedy is ``nats kv del tecc_hpke ring`` with every frontend in
        that state (see docs/CLOUD.md).
        """
        if self.ring is not None:
            log.error("%s was deleted; ring version %d in use stays", WHERE, self.ring.version)
            return
        log.warning("%s was deleted and no ring is in use here: creating version 1", WHERE)
        await self._load(self._bucket())

    async def _check(self) -> None:
        stored = await self._bucket().get(RING_KEY)
        if stored is not None and stored.value is not None and stored.revision > self._seen:
            self.apply(stored.value, stored.revision)

    async def _timer(self) -> None:
        """Rotate when due; tell the frontend when the previous key's overlap ends."""
        overlap_told = 0  # the version whose overlap end was announced
        while True:
            ring = self.ring
            if ring is None:  # none usable yet: the watch will bring one
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.time_ns()
            wakes = []
            if self.rotation_ns > 0:
                wakes.append(ring.since_ns + self.rotation_ns)
            if ring.previous_public and overlap_told != ring.version:
                wakes.append(ring.since_ns + self.overlap_ns)
            delay = max(min(wakes) - now, 0) / 1e9 + 0.01 if wakes else self.check_s
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
                continue  # a new ring: recompute
            except TimeoutError:
                pass
            now = time.time_ns()
            if ring.previous_public and not self.in_overlap(now) and overlap_told != ring.version:
                overlap_told = ring.version
                log.info("HPKE ring version %d: the previous key is retired", ring.version)
                self.on_change(ring)
            if self.due(ring, now):
                try:
                    await self.rotate_once(now)
                except (*TRANSIENT, KVError) as exc:
                    log.warning("HPKE rotation not written now (%r); retrying", exc)
                    await asyncio.sleep(_RETRY_S)

    def health(self) -> HpkeRingHealth:
        """For ``/healthz``: the version in use, its key's digest, and the last refusal."""
        ring = self.ring
        return HpkeRingHealth(
            version=ring.version if ring else None,
            current=ring.digest if ring else None,
            since_ns=ring.since_ns if ring else None,
            overlap=self.in_overlap(time.time_ns()),
            error=self.error or None,
        )

    async def close(self) -> None:
        """Close the connection."""
        if self.nc is not None:
            await self.nc.close()
