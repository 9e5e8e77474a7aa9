"""The party's gateway enrolment registry in its JetStream KV (every frontend and worker).

With ``jetstream:`` in a party's config the registry of
:mod:`cloud_tecc.party.registry` is :class:`KvRegistry` over the bucket
``tecc_enrolment``: one key per gateway, ``gw.<token>`` (the gateway id if it
is a plain token ``[A-Za-z0-9][A-Za-z0-9_-]*``, else ``_`` + its UTF-8 in
hex, as in the share log's subjects), whose value is one :class:`RecordWire`
(msgspec JSON, unknown fields refused). A forgotten gateway's key holds a
delete marker.

- **Writes** are compare-and-set on the key's revision
  (``Nats-Expected-Last-Subject-Sequence``): :meth:`KvRegistry.update` reads
  the current record, applies the caller's change *to it*, and writes iff
  nobody wrote meanwhile; otherwise it re-reads and re-applies (counted in
  ``tecc_enrolment_kv_conflicts_total``). So a re-quote at one frontend and an
  operator's revocation at another never lose each other's change.
- **Reads** come from an in-memory snapshot kept current by a KV watch (an
  ordered push consumer, last value per key first, then every change); every
  second the process checks that it has applied the bucket's last sequence
  and restarts the watch if it stays behind for :data:`BEHIND_S`.
  ``tecc_enrolment_kv_sync_age_seconds`` is the time since the snapshot was
  last known current.
- **Malformed values** (not a valid record, or a record naming another
  gateway than its key) are refused, counted in
  ``tecc_enrolment_kv_malformed_total{bucket}`` and logged; the gateway is then
  held ``suspended`` in this process's snapshot (its data refused) until a
  valid record replaces the value — a damaged record never admits anything.

Nonces live in :mod:`cloud_tecc.jetstream.enrolnonces`; the one-time import of
an all-in-one party's ``enrolment.db`` is :func:`import_sqlite`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal, cast

import msgspec
import nats.errors
import nats.js.errors
from msgspec import Meta
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.jetstream.kv import (
    TRANSIENT,
    Bucket,
    KVError,
    RevisionChangedError,
    contention_pause,
    open_bucket,
)
from cloud_tecc.jetstream.sharelog import gateway_token
from cloud_tecc.party.registry import (
    DB_FILE,
    Change,
    GatewayRecord,
    GatewayRegistry,
    Registry,
    RegistryUnavailableError,
)
from cloud_tecc.tasks import check_cancelled

log = logging.getLogger(__name__)

ENROLMENT_BUCKET: Final = "tecc_enrolment"
RECORD_PREFIX: Final = "gw."
#: The snapshot is restarted from the bucket when it stays behind this long.
BEHIND_S: Final = 3.0
CHECK_S: Final = 1.0
_TRIES: Final = 16

Hex32 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
PcrIndex = Annotated[str, Meta(pattern="^([0-9]|1[0-9]|2[0-3])$")]
PcrValue = Annotated[str, Meta(pattern="^[0-9a-f]{40,128}$")]
Ns = Annotated[int, Meta(ge=0)]


State = Literal["pending", "enrolled", "suspended", "revoked"]


class RecordWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One gateway's record in ``tecc_enrolment`` (version 1)."""

    v: Literal[1]
    gateway_id: Annotated[str, Meta(min_length=1, max_length=200)]
    state: State
    reason: Annotated[str, Meta(max_length=1000)]
    identity_key: Hex32 | None  # raw Ed25519 public key
    ek_fingerprint: Hex32 | None  # SHA-256 of the EK certificate
    ak_public: Annotated[str, Meta(max_length=2048)] | None  # base64 TPM2B_PUBLIC
    golden: dict[PcrIndex, PcrValue]  # the enrolled (approved) PCR values
    seen: dict[PcrIndex, PcrValue]  # the PCR values of the last verified quote
    enrolled_ns: Ns
    last_quote_ns: Ns
    updated_ns: Ns


def record_key(gateway_id: str) -> str:
    """The KV key of ``gateway_id``'s record."""
    return RECORD_PREFIX + gateway_token(gateway_id)


def gateway_of(key: str) -> str | None:
    """The gateway id a record key names (None if it is not a record key)."""
    if not key.startswith(RECORD_PREFIX):
        return None
    token = key[len(RECORD_PREFIX) :]
    if token.startswith("_"):
        try:
            return bytes.fromhex(token[1:]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    return token or None


def encode_record(rec: GatewayRecord) -> bytes:
    """``rec`` as the bytes of its KV value."""
    return msgspec.json.encode(
        RecordWire(
            v=1,
            gateway_id=rec.gateway_id,
            state=cast(State, rec.state),  # checked again by decode on every read
            reason=rec.reason[:1000],
            identity_key=None if rec.identity_key is None else rec.identity_key.hex(),
            ek_fingerprint=rec.ek_fingerprint,
            ak_public=None if rec.ak_public is None else base64.b64encode(rec.ak_public).decode(),
            golden={str(k): v.hex() for k, v in sorted(rec.golden.items())},
            seen={str(k): v.hex() for k, v in sorted(rec.seen.items())},
            enrolled_ns=rec.enrolled_ns,
            last_quote_ns=rec.last_quote_ns,
            updated_ns=rec.updated_ns,
        )
    )


def decode_record(raw: bytes, key: str) -> GatewayRecord:
    """The record of a KV value, or KVError naming the key and the problem."""
    where = f"{ENROLMENT_BUCKET}/{key}"
    try:
        w = msgspec.json.decode(raw, type=RecordWire)
        ak = None if w.ak_public is None else base64.b64decode(w.ak_public, validate=True)
    except (msgspec.ValidationError, msgspec.DecodeError, binascii.Error) as exc:
        raise KVError(
            f"{where} holds no valid enrolment record ({exc}); revoke or forget the gateway "
            "with `tecc-cluster admin` to overwrite it"
        ) from exc
    if record_key(w.gateway_id) != key:
        raise KVError(f"{where} holds the record of another gateway ({w.gateway_id!r})")
    return GatewayRecord(
        w.gateway_id,
        w.state,
        w.reason,
        None if w.identity_key is None else bytes.fromhex(w.identity_key),
        w.ek_fingerprint,
        ak,
        {int(k): bytes.fromhex(v) for k, v in w.golden.items()},
        {int(k): bytes.fromhex(v) for k, v in w.seen.items()},
        w.enrolled_ns,
        w.last_quote_ns,
        w.updated_ns,
    )


def _damaged(gateway_id: str, exc: Exception) -> GatewayRecord:
    """What a malformed record stands for in the snapshot: refused, with the reason."""
    reason = f"its record in {ENROLMENT_BUCKET} is malformed ({str(exc)[:200]})"
    return GatewayRecord(gateway_id, "suspended", reason, None, None, None, {}, {}, 0, 0, 0)


class KvRegistry(GatewayRegistry):
    """The gateway records of a party in ``tecc_enrolment``: a watched snapshot, CAS writes."""

    def __init__(self, metrics: CollectorRegistry | None = None) -> None:
        self._records = {}
        self._revisions: dict[str, int] = {}  # gateway → revision of its snapshot entry
        self._applied = 0  # the highest stream sequence applied
        self._ready = asyncio.Event()
        self._current_at = 0.0  # monotonic: when the snapshot was last known current
        self.bucket: Bucket | None = None
        self._kv: KeyValue | None = None
        metrics = metrics if metrics is not None else CollectorRegistry()
        self.malformed = Counter(
            "tecc_enrolment_kv_malformed",
            "Enrolment KV values refused as malformed",
            ["bucket"],
            registry=metrics,
        )
        self.conflicts = Counter(
            "tecc_enrolment_kv_conflicts",
            "Enrolment writes re-applied because another process wrote first (CAS)",
            registry=metrics,
        )
        self.sync_age = Gauge(
            "tecc_enrolment_kv_sync_age_seconds",
            "Seconds since this process's enrolment snapshot was last known current",
            registry=metrics,
        )
        self.sync_age.set_function(self.age_s)

    @property
    def ready(self) -> bool:
        """True once the first full snapshot is loaded."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Until the first full snapshot is loaded."""
        await self._ready.wait()

    def age_s(self) -> float:
        """Seconds since the snapshot was last known current (inf before the first load)."""
        return time.monotonic() - self._current_at if self.ready else float("inf")

    async def open(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        """Create or open the bucket (idempotent); :meth:`run` or :meth:`load` reads it."""
        self.bucket = await open_bucket(js, ENROLMENT_BUCKET, replicas=replicas)
        self._kv = await js.key_value(ENROLMENT_BUCKET)

    def _need(self) -> Bucket:
        if self.bucket is None:
            raise RegistryUnavailableError("the enrolment registry is not connected to the KV yet")
        return self.bucket

    # -- reading: snapshot and watch ------------------------------------------------------

    def _entry(self, key: str, value: bytes | None) -> tuple[str, GatewayRecord | None] | None:
        """A KV entry as (gateway, record or None = deleted); None for a foreign key."""
        gid = gateway_of(key)
        if gid is None:
            self.malformed.labels(ENROLMENT_BUCKET).inc()
            log.error("%s/%s: not a gateway record key; ignored", ENROLMENT_BUCKET, key)
            return None
        if value is None:
            return gid, None
        try:
            return gid, decode_record(value, key)
        except KVError as exc:
            self.malformed.labels(ENROLMENT_BUCKET).inc()
            log.error("enrolment record refused: %s", exc)
            return gid, _damaged(gid, exc)

    async def _snapshot(self) -> Any:  # nats-py's KeyWatcher (untyped)
        """A watcher past a full snapshot (last value per key), which replaced the current one.

        The snapshot is built aside and swapped in whole: readers never see a
        partial one (a reload never briefly forgets a revocation).
        """
        if self._kv is None:
            raise RegistryUnavailableError("the enrolment registry is not connected to the KV yet")
        watcher: Any = await self._kv.watchall()
        records: dict[str, GatewayRecord] = {}
        revisions: dict[str, int] = {}
        applied = 0
        try:
            while (entry := await watcher.updates(timeout=10.0)) is not None:
                revision = entry.revision or 0
                applied = max(applied, revision)
                got = self._entry(entry.key, _value(entry))
                if got is not None:
                    revisions[got[0]] = revision
                    if got[1] is not None:
                        records[got[0]] = got[1]
                    else:
                        records.pop(got[0], None)
        except BaseException:
            await watcher.stop()
            raise
        self._records, self._revisions, self._applied = records, revisions, applied
        self._current_at = time.monotonic()
        self._ready.set()
        return watcher

    async def load(self) -> None:
        """One full snapshot, no watch (the operator tool)."""
        watcher: Any = await self._snapshot()
        await watcher.stop()

    async def run(self) -> None:
        """Keep the snapshot current for ever: watch, check, reload after a lost watch."""
        while True:
            check_cancelled()  # a cancel lost inside nats-py (cloud_tecc.tasks)
            try:
                watcher: Any = await self._snapshot()
                try:
                    await self._follow(watcher)
                finally:
                    await watcher.stop()
            except (*TRANSIENT, KVError, RegistryUnavailableError) as exc:
                log.warning("enrolment watch interrupted (%r); reloading", exc)
                await asyncio.sleep(0.5)

    async def _follow(self, watcher: Any) -> None:
        """Apply every change; every CHECK_S check the snapshot is at the bucket's last seq."""
        bucket = self._need()
        behind_since: float | None = None
        checked = time.monotonic()
        while True:
            check_cancelled()
            try:
                entry = await watcher.updates(timeout=CHECK_S)
            except nats.errors.TimeoutError:
                entry = None
            if entry is not None and (entry.revision or 0) > self._applied:
                self._applied = entry.revision or 0
                got = self._entry(entry.key, _value(entry))
                if got is not None and self._revisions.get(got[0], 0) < self._applied:
                    self._revisions = {**self._revisions, got[0]: self._applied}
                    self._publish(*got)
            now = time.monotonic()
            if now - checked < CHECK_S:
                continue
            checked = now
            info = await asyncio.wait_for(bucket.js.stream_info(bucket.stream), 5.0)
            if self._applied >= int(info.state.last_seq):
                self._current_at, behind_since = now, None
            elif behind_since is None:
                behind_since = now
            elif now - behind_since > BEHIND_S:
                raise KVError(f"enrolment watch behind the bucket for {BEHIND_S:.0f} s")

    # -- writing: compare-and-set -------------------------------------------------------------

    async def update(
        self, gateway_id: str, change: Change, *, operator: bool = False
    ) -> GatewayRecord | None:
        """Read, apply ``change`` to the current record, write iff unchanged; else again."""
        bucket, key = self._need(), record_key(gateway_id)
        apply = self._guarded(change, operator)
        try:
            for attempt in range(_TRIES):
                stored = await bucket.get(key)
                cur: GatewayRecord | None = None
                if stored is not None and stored.value is not None:
                    try:
                        cur = decode_record(stored.value, key)
                    except KVError as exc:
                        self.malformed.labels(ENROLMENT_BUCKET).inc()
                        if not operator:  # only the operator overwrites a damaged record
                            log.error("enrolment record not updated: %s", exc)
                            return _damaged(gateway_id, exc)
                new = apply(cur)
                expected = 0 if stored is None else stored.revision
                present = stored is not None and stored.value is not None  # valid or damaged
                try:
                    if new is cur and (cur is not None or not present):
                        return cur
                    if new is None:
                        if not present:
                            return None
                        revision = await self._cas(bucket, key, b"", expected, delete=True)
                    else:
                        revision = await self._cas(bucket, key, encode_record(new), expected)
                except RevisionChangedError:
                    self.conflicts.inc()
                    await contention_pause(attempt)
                    continue
                self._apply_own(gateway_id, revision, new)
                return new
        except (*TRANSIENT, nats.js.errors.APIError) as exc:
            raise RegistryUnavailableError(
                f"{ENROLMENT_BUCKET}/{key} not written: {exc!r}"
            ) from exc
        raise RegistryUnavailableError(f"{ENROLMENT_BUCKET}/{key} kept changing; try again")

    async def _cas(
        self, bucket: Bucket, key: str, value: bytes, expected: int, *, delete: bool = False
    ) -> int:
        """The one compare-and-set write of :meth:`update` (a seam for the race tests)."""
        return await bucket.write(key, value, expected=expected, delete=delete)

    def _apply_own(self, gateway_id: str, revision: int, rec: GatewayRecord | None) -> None:
        if self._revisions.get(gateway_id, 0) < revision:
            self._revisions = {**self._revisions, gateway_id: revision}
            self._publish(gateway_id, rec)


def _value(entry: KeyValue.Entry) -> bytes | None:
    return None if entry.operation in ("DEL", "PURGE") else (entry.value or b"")


def _read_sqlite(state_dir: Path) -> list[GatewayRecord]:
    old = Registry(state_dir)
    try:
        return old.records()
    finally:
        old.close()


async def import_sqlite(registry: GatewayRegistry, state_dir: Path) -> int:
    """Import ``state_dir/enrolment.db`` into the KV once; the records imported.

    A record the KV lacks is copied; one the KV holds stays, except that a
    revocation in the file is never lost (the KV record becomes revoked). The
    file (and its ``-wal``/``-shm``) is then renamed ``enrolment.db.imported``:
    it is no longer read, and the next start does not import it again. A crash
    before the rename imports again at the next start, with the same result.
    """
    path = state_dir / DB_FILE
    if not path.exists():
        return 0
    records = await asyncio.to_thread(_read_sqlite, state_dir)

    def merge(file: GatewayRecord) -> Change:
        def apply(cur: GatewayRecord | None) -> GatewayRecord | None:
            if cur is None:
                return file
            if file.state == "revoked" and cur.state != "revoked":
                return replace(cur, state="revoked", reason=f"{file.reason} (imported)")
            return cur

        return apply

    for rec in records:
        await registry.update(rec.gateway_id, merge(rec), operator=True)
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(DB_FILE + suffix)
        try:
            src.rename(path.with_name(f"{DB_FILE}.imported{suffix}"))
        except FileNotFoundError:
            continue  # another process on this state dir renamed it first
    log.warning(
        "imported %d gateway records from %s into %s; the file is renamed %s.imported and "
        "no longer used",
        len(records),
        path,
        ENROLMENT_BUCKET,
        DB_FILE,
    )
    return len(records)
