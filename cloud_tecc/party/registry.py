"""The party's live gateway allow-list: enrolled, pending, suspended and revoked gateways.

One interface (:class:`GatewayRegistry`), two backends:

- :class:`Registry`: ``state_dir/enrolment.db`` (SQLite, WAL), the all-in-one
  party's. The operator tool (``tecc-cluster admin``, :mod:`cloud_tecc.admin`)
  writes the same file; the running party notices a commit by another
  connection (``PRAGMA data_version``) within :data:`REFRESH_S` and reloads.
- :class:`cloud_tecc.jetstream.enrolkv.KvRegistry`: with ``jetstream:`` the
  records live in the party's JetStream KV (bucket ``tecc_enrolment``), shared
  by every frontend and worker on any host, each watching it.

Reads (:meth:`get`, :meth:`records`, :meth:`count`) come from an in-memory
snapshot replaced as a whole on every change, so the ingest threads read a
consistent one without a lock. Every write is :meth:`update`: a function of
the *current* record, applied atomically (an SQLite transaction, or a KV
compare-and-set re-applied to the newer record when another process wrote
first), so two writers never lose each other's change.

States: ``pending`` (evidence verified, waiting for the operator or for a PCR
value the policy does not list), ``enrolled`` (its batches are accepted),
``suspended`` (its PCRs changed or it stopped re-quoting: its batches are
refused and counted until it attests again), ``revoked`` (refused until the
operator forgets it). Gateways named in the config's ``gateways`` map are
accepted without a record unless revoked here.
"""

from __future__ import annotations

import abc
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_tecc.errors import CloudError, IngestError

DB_FILE: Final = "enrolment.db"
REFRESH_S: Final = 0.5
STATES: Final = ("pending", "enrolled", "suspended", "revoked")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    identity_key BLOB,
    ek_fingerprint TEXT,
    ak_public BLOB,
    golden TEXT NOT NULL,
    seen TEXT NOT NULL,
    enrolled_ns INTEGER NOT NULL,
    last_quote_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """One gateway known to this party's enrolment."""

    gateway_id: str
    state: str
    reason: str
    identity_key: bytes | None  # raw Ed25519 public key; None for a revoked config gateway
    ek_fingerprint: str | None  # SHA-256 of the EK certificate
    ak_public: bytes | None  # marshalled TPM2B_PUBLIC
    golden: Mapping[int, bytes]  # PCR values accepted at enrolment (or approval)
    seen: Mapping[int, bytes]  # PCR values of the latest verified quote
    enrolled_ns: int
    last_quote_ns: int
    updated_ns: int

    def summary(self) -> dict[str, object]:
        """JSON-friendly view for operators (no key material beyond public fingerprints)."""
        return {
            "gateway_id": self.gateway_id,
            "state": self.state,
            "reason": self.reason,
            "identity_key": None if self.identity_key is None else self.identity_key.hex(),
            "ek_fingerprint": self.ek_fingerprint,
            "golden": {str(k): v.hex() for k, v in sorted(self.golden.items())},
            "seen": {str(k): v.hex() for k, v in sorted(self.seen.items())},
            "enrolled_ns": self.enrolled_ns,
            "last_quote_ns": self.last_quote_ns,
            "updated_ns": self.updated_ns,
        }


def _pcrs_json(values: Mapping[int, bytes]) -> str:
    return json.dumps({str(k): v.hex() for k, v in sorted(values.items())})


def _pcrs_from(text: str) -> dict[int, bytes]:
    return {int(k): bytes.fromhex(v) for k, v in json.loads(text).items()}


_SELECT: Final = (
    "SELECT gateway_id, state, reason, identity_key, ek_fingerprint, ak_public, golden, seen, "
    "enrolled_ns, last_quote_ns, updated_ns FROM gateways"
)


def _row(r: Any) -> GatewayRecord:
    return GatewayRecord(
        r[0], r[1], r[2], r[3], r[4], r[5], _pcrs_from(r[6]), _pcrs_from(r[7]), *r[8:]
    )


class RegistryUnavailableError(CloudError):
    """The registry cannot be read or written now (its KV is away): answer 503, retry later."""


#: A write: the new record computed from the current one (None: absent), or None to delete.
Change = Callable[[GatewayRecord | None], GatewayRecord | None]


class GatewayRegistry(abc.ABC):
    """The interface of both backends: snapshot reads, atomic writes, operator helpers."""

    def get(self, gateway_id: str) -> GatewayRecord | None:
        """The record of ``gateway_id`` (from the snapshot)."""
        return self._records.get(gateway_id)

    def records(self) -> list[GatewayRecord]:
        """Every record, by gateway id."""
        return [self._records[k] for k in sorted(self._records)]

    def count(self, state: str) -> int:
        """How many records are in ``state``."""
        return sum(1 for r in self._records.values() if r.state == state)

    def refresh(self) -> bool:
        """Pick up other writers' changes now if the backend needs polling; True if any."""
        return False

    @property
    def ready(self) -> bool:
        """Whether the snapshot holds the party's records (False until a KV's first sync)."""
        return True

    def close(self) -> None:  # noqa: B027 - a backend without resources keeps this
        """Release the backend."""

    @abc.abstractmethod
    async def update(
        self, gateway_id: str, change: Change, *, operator: bool = False
    ) -> GatewayRecord | None:
        """Apply ``change`` to the current record atomically (durable before it returns).

        Only the operator (``operator=True``) can change a revoked record: a
        write computed while a concurrent ``revoke`` landed keeps the
        revocation (``change`` is not called; the revoked record is returned).
        """

    _records: dict[str, GatewayRecord]

    def _publish(self, gateway_id: str, rec: GatewayRecord | None) -> None:
        records = dict(self._records)
        if rec is None:
            records.pop(gateway_id, None)
        else:
            records[gateway_id] = rec
        self._records = records

    @staticmethod
    def _guarded(change: Change, operator: bool) -> Change:
        def apply(cur: GatewayRecord | None) -> GatewayRecord | None:
            if not operator and cur is not None and cur.state == "revoked":
                return cur
            return change(cur)

        return apply

    async def put(self, rec: GatewayRecord, *, operator: bool = False) -> GatewayRecord:
        """Insert or replace ``rec``; the stored record (a revoked one wins, see update)."""
        out = await self.update(rec.gateway_id, lambda _cur: rec, operator=operator)
        return rec if out is None else out

    async def forget(self, gateway_id: str) -> bool:
        """Delete the record of ``gateway_id``; True if there was one."""
        found = False

        def drop(cur: GatewayRecord | None) -> None:
            nonlocal found
            found = cur is not None

        await self.update(gateway_id, drop, operator=True)
        return found

    async def set_state(
        self, gateway_id: str, state: str, reason: str, now_ns: int, *, operator: bool = False
    ) -> GatewayRecord:
        """Move an existing record to ``state`` (KeyError if unknown); the result."""

        def move(rec: GatewayRecord | None) -> GatewayRecord:
            if rec is None:
                raise KeyError(gateway_id)
            new = replace(rec, state=state, reason=reason, updated_ns=now_ns)
            if state == "enrolled" and rec.state != "enrolled":
                new = replace(new, golden=rec.seen or rec.golden, last_quote_ns=now_ns)
            return new

        out = await self.update(gateway_id, move, operator=operator)
        if out is None:
            raise KeyError(gateway_id)
        return out

    async def revoke(self, gateway_id: str, reason: str, now_ns: int) -> GatewayRecord:
        """Revoke ``gateway_id`` (a record is created for a gateway known only to the config)."""

        def revoked(rec: GatewayRecord | None) -> GatewayRecord:
            if rec is None:
                rec = GatewayRecord(gateway_id, "revoked", "", None, None, None, {}, {}, 0, 0, 0)
            return replace(rec, state="revoked", reason=reason, updated_ns=now_ns)

        out = await self.update(gateway_id, revoked, operator=True)
        if out is None:
            raise KeyError(gateway_id)
        return out


class Registry(GatewayRegistry):
    """The SQLite backend: the gateway records of one party in ``state_dir/enrolment.db``."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_FILE
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._version = -1
        self._records = {}
        self.refresh()

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def refresh(self) -> bool:
        """Reload if another connection committed since the last load; True if it did."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version == self._version:
            return False
        self._version = version
        rows = self._db.execute(_SELECT).fetchall()
        self._records = {r[0]: _row(r) for r in rows}
        return True

    async def update(
        self, gateway_id: str, change: Change, *, operator: bool = False
    ) -> GatewayRecord | None:
        """One ``BEGIN IMMEDIATE`` transaction: read the row, apply ``change``, write."""
        apply = self._guarded(change, operator)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(_SELECT + " WHERE gateway_id = ?", (gateway_id,)).fetchone()
            cur = None if row is None else _row(row)
            new = apply(cur)
            if new is None:
                self._db.execute("DELETE FROM gateways WHERE gateway_id = ?", (gateway_id,))
            elif new is not cur:
                self._write(new)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._publish(gateway_id, new)
        return new

    def _write(self, rec: GatewayRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO gateways VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                rec.gateway_id,
                rec.state,
                rec.reason,
                rec.identity_key,
                rec.ek_fingerprint,
                rec.ak_public,
                _pcrs_json(rec.golden),
                _pcrs_json(rec.seen),
                rec.enrolled_ns,
                rec.last_quote_ns,
                rec.updated_ns,
            ),
        )


class LiveKeys(Mapping[str, Ed25519PublicKey]):
    """The gateway keys the party verifies signatures with: the config's plus the registry's.

    A key is returned for every known gateway, whatever its state, so a frame
    of a suspended or revoked gateway verifies and is then refused by
    :meth:`admit` with its real reason (the caller proved it holds the key).
    """

    def __init__(self, static: Mapping[str, Ed25519PublicKey], registry: GatewayRegistry) -> None:
        self._static = dict(static)
        self._registry = registry
        #: gateway id → (raw key, parsed key): one entry per record, replaced on re-enrolment.
        self._cache: dict[str, tuple[bytes, Ed25519PublicKey]] = {}

    def __getitem__(self, gateway_id: str) -> Ed25519PublicKey:
        if gateway_id in self._static:  # the config's key wins: an enrolment cannot replace it
            return self._static[gateway_id]
        rec = self._registry.get(gateway_id)
        if rec is not None and rec.identity_key is not None:
            hit = self._cache.get(gateway_id)
            if hit is not None and hit[0] == rec.identity_key:
                return hit[1]
            key = Ed25519PublicKey.from_public_bytes(rec.identity_key)
            self._cache = {**self._cache, gateway_id: (rec.identity_key, key)}
            return key
        raise KeyError(gateway_id)

    def __iter__(self) -> Iterator[str]:
        return iter(set(self._static) | {r.gateway_id for r in self._registry.records()})

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def refused(self) -> list[str]:
        """The gateways :meth:`admit` refuses now (a record not ``enrolled``), sorted."""
        return [r.gateway_id for r in self._registry.records() if r.state != "enrolled"]

    def admit(self, gateway_id: str) -> None:
        """Raise :class:`IngestError` unless ``gateway_id``'s data may be accepted now."""
        if not self._registry.ready:  # fail closed: a revocation may not be loaded yet
            raise IngestError(
                "overloaded", "the party's enrolment registry is not loaded yet: retry shortly"
            )
        rec = self._registry.get(gateway_id)
        if rec is None or rec.state == "enrolled":
            return
        hint = {
            "pending": "awaits approval (`tecc-cluster admin approve` on this party) or a "
            "PCR value the enrolment policy lists",
            "suspended": "is suspended until it attests again with its enrolled PCR values",
            "revoked": "was revoked by the operator",
        }[rec.state]
        raise IngestError(rec.state, f"gateway {gateway_id!r} {hint} ({rec.reason})")
