"""The durable envelope spool: SQLite in WAL mode with a synchronous commit per batch.

One batch = one transaction holding its N envelopes (one per cluster) and the
new sequence counter, so after a crash either the whole batch is there or none
of it is, and a retry resends byte-identical frames. A fresh spool starts the
counter at the current Unix time in milliseconds, so a gateway whose spool was
lost or moved aside never reuses a seq the clusters already hold (they would
refuse it as a replay). Each cluster has its own
cursor (its remaining envelope rows); a batch disappears only once every
cluster has acknowledged its envelope.

At rest every frame is additionally encrypted with the TPM-sealed spool key
(AES-256-GCM, associated data = gateway id, seq and cluster). The frames are
already HPKE-sealed to the clusters, so this protects the metadata a frame
header carries (sensor ids, timestamps, counts) on a stolen disk and detects
tampering with the spool file. A batch's own metadata (creation time, reading
count, oldest timestamp) and the MQTT in-flight records are sealed the same
way under purpose keys (:mod:`gateway.atrest`); the plain SQL columns hold 0,
and the metadata is kept decrypted in memory for the cursors. What stays
visible: the seq numbers (one per batch, starting at the creation time in ms),
frame lengths and the gateway id. ``secure_delete`` overwrites deleted rows;
the file (and its WAL) is created 0600 in a 0700 directory.

Bound: the sum of stored frame bytes may not exceed ``max_bytes``. When a new
batch would exceed it, :meth:`Spool.append` raises
:class:`~gateway.errors.SpoolFullError` and stores nothing; existing batches
are never evicted. The agent then refuses new readings and raises its alarm
metric until the clusters drain the spool.

Thread-safety: every method takes one lock, so the agent may run the fsyncing
:meth:`append` in a worker thread while the event loop reads cursors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.atrest import Sealed, pack_meta, private_dir, private_file, unpack_meta
from gateway.errors import SpoolError, SpoolFullError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, created_ns INTEGER NOT NULL, readings INTEGER NOT NULL,
    min_ts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS envelopes (
    cluster INTEGER NOT NULL, seq INTEGER NOT NULL, frame BLOB NOT NULL,
    PRIMARY KEY (cluster, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (cluster INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batch_meta (seq INTEGER PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inflight (
    seq INTEGER NOT NULL, source TEXT NOT NULL, tokens BLOB NOT NULL,
    PRIMARY KEY (seq, source));
"""
_NONCE = 12
_INFLIGHT_KEEP = 1000  # batches; older leftovers (from repeated crashes) are purged


def pack_tokens(tokens: Iterable[tuple[int, int]]) -> bytes:
    """Pack (packet id, digest) pairs as little-endian uint32 pairs."""
    return array("I", chain.from_iterable(tokens)).tobytes()


def unpack_tokens(blob: bytes) -> dict[int, int]:
    """Inverse of :func:`pack_tokens`: packet id -> digest."""
    flat = array("I")
    flat.frombytes(blob)
    return dict(zip(flat[0::2], flat[1::2], strict=True))


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """A cluster key pinned at its first successful attestation."""

    cluster: int
    service_id: str
    suite: str
    public_key: bytes


class Spool:
    """Durable per-cluster queues of sealed frames, bounded by total bytes."""

    def __init__(
        self,
        path: Path,
        *,
        gateway_id: str,
        n_clusters: int,
        spool_key: bytes,
        max_bytes: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        private_dir(path.parent)
        private_file(path)
        self._gw = gateway_id
        self._n = n_clusters
        self._aead = AESGCM(spool_key)
        self._meta_aead = Sealed(spool_key, "batch-meta", random_bytes)
        self._inflight_aead = Sealed(spool_key, "inflight", random_bytes)
        self._rand = random_bytes
        self._now_ns = now_ns
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(batches)")}
            if "min_ts" not in cols:  # spools written before progress notices: 0 = unknown
                self._db.execute("ALTER TABLE batches ADD COLUMN min_ts INTEGER NOT NULL DEFAULT 0")
            self._check_meta()
            self._depth = [0] * n_clusters
            self._bytes = 0
            for cluster, count, size in self._db.execute(
                "SELECT cluster, count(*), sum(length(frame)) FROM envelopes GROUP BY cluster"
            ):
                if 0 <= cluster < n_clusters:
                    self._depth[cluster] = int(count)
                self._bytes += int(size)
            self._load_meta()
        except sqlite3.DatabaseError as exc:
            raise SpoolError(
                f"spool {path} is unusable ({exc}); move it aside to start "
                "fresh (its unsent batches are then lost)"
            ) from exc

    def _check_meta(self) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("gateway_id", self._gw),
                    ("clusters", str(self._n)),
                    ("last_seq", str(self._now_ns() // 1_000_000)),
                ],
            )
            return
        if rows.get("gateway_id") != self._gw or rows.get("clusters") != str(self._n):
            raise SpoolError(
                f"spool belongs to gateway {rows.get('gateway_id')!r} with "
                f"{rows.get('clusters')} clusters, not {self._gw!r} with {self._n}; "
                "point spool.path elsewhere"
            )

    def _load_meta(self) -> None:
        """Decrypt every waiting batch's metadata into memory (cursors query it often)."""
        #: seq -> (created_ns, readings, min_ts), and per cluster the seqs it has not acked
        self._meta: dict[int, tuple[int, int, int]] = {}
        self._queued: list[set[int]] = [set() for _ in range(self._n)]
        sealed = dict(self._db.execute("SELECT seq, sealed FROM batch_meta").fetchall())
        for seq, created, readings, min_ts in self._db.execute(
            "SELECT seq, created_ns, readings, min_ts FROM batches"
        ):
            blob = sealed.get(seq)
            self._meta[int(seq)] = (
                unpack_meta(self._meta_aead.open(blob, self._meta_aad(int(seq))))
                if blob is not None
                else (int(created), int(readings), int(min_ts))  # written before sealing
            )
        for cluster, seq in self._db.execute("SELECT cluster, seq FROM envelopes"):
            if 0 <= cluster < self._n:
                self._queued[cluster].add(int(seq))

    def _meta_aad(self, seq: int) -> bytes:
        return f"tecc-batch-meta-v1|{self._gw}|{seq}".encode()

    def _inflight_aad(self, seq: int, source: str) -> bytes:
        return f"tecc-inflight-v1|{self._gw}|{seq}|{source}".encode()

    def _aad(self, seq: int, cluster: int) -> bytes:
        return f"tecc-spool-v1|{self._gw}|{seq}|{cluster}".encode()

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = self._rand(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def _open(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except InvalidTag as exc:
            raise SpoolError(
                "a spool row failed authentication: the spool file was "
                "modified or belongs to another spool key"
            ) from exc

    def last_seq(self) -> int:
        """The highest sequence number spooled (a fresh spool: its creation time in ms)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        return int(row[0])

    def append(
        self,
        seq: int,
        created_ns: int,
        readings: int,
        frames: list[bytes],
        *,
        inflight: Mapping[str, bytes] | None = None,
        released: Sequence[int] = (),
        min_ts: int = 0,
    ) -> None:
        """Durably store one batch's N frames in one transaction (fsync on commit).

        ``inflight`` maps a source to the packed (:func:`pack_tokens`) packet
        ids and digests of the messages this batch covers, recorded so that a
        redelivery after a crash between this commit and their acknowledgement
        is recognised; ``released`` are the seqs of earlier batches whose
        acknowledgements have since been sent (their records are dropped).
        ``min_ts`` is the batch's oldest reading timestamp (it bounds the
        progress notices, :meth:`pending_min_ts`; 0 holds them back until acked).
        """
        if len(frames) != self._n:
            raise SpoolError(f"expected {self._n} frames, got {len(frames)}")
        rows = [(c, seq, self._seal(f, self._aad(seq, c))) for c, f in enumerate(frames)]
        size = sum(len(r[2]) for r in rows)
        meta = self._meta_aead.seal(pack_meta(created_ns, readings, min_ts), self._meta_aad(seq))
        records = [
            (seq, src, self._inflight_aead.seal(blob, self._inflight_aad(seq, src)))
            for src, blob in (inflight or {}).items()
        ]
        with self._lock:
            if self._bytes + size > self.max_bytes:
                raise SpoolFullError(
                    f"spool holds {self._bytes} of {self.max_bytes} bytes; a cluster is not "
                    "draining — check uplink errors, or raise spool.max_bytes"
                )
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO batches (seq, created_ns, readings, min_ts) VALUES (?, 0, 0, 0)",
                    (seq,),
                )
                db.execute("INSERT INTO batch_meta VALUES (?, ?)", (seq, meta))
                db.executemany("INSERT INTO envelopes VALUES (?, ?, ?)", rows)
                db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (str(seq),))
                db.executemany("DELETE FROM inflight WHERE seq=?", [(s,) for s in released])
                db.execute("DELETE FROM inflight WHERE seq < ?", (seq - _INFLIGHT_KEEP,))
                db.executemany("INSERT OR REPLACE INTO inflight VALUES (?, ?, ?)", records)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise SpoolError(f"could not spool batch {seq}: {exc}") from exc
            self._bytes += size
            self._meta[seq] = (created_ns, readings, min_ts)
            for c in range(self._n):
                self._depth[c] += 1
                self._queued[c].add(seq)

    def pending(self, cluster: int, limit: int = 64) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` unacknowledged (seq, frame) pairs for ``cluster``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, frame FROM envelopes WHERE cluster=? ORDER BY seq LIMIT ?",
                (cluster, limit),
            ).fetchall()
        return [(int(s), self._open(f, self._aad(int(s), cluster))) for s, f in rows]

    def ack(self, cluster: int, seq: int) -> None:
        """Record that ``cluster`` holds batch ``seq``; drop the batch once all clusters do."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "DELETE FROM envelopes WHERE cluster=? AND seq=? RETURNING length(frame)",
                (cluster, seq),
            ).fetchone()
            left = db.execute("SELECT count(*) FROM envelopes WHERE seq=?", (seq,)).fetchone()
            if left[0] == 0:
                db.execute("DELETE FROM batches WHERE seq=?", (seq,))
                db.execute("DELETE FROM batch_meta WHERE seq=?", (seq,))
            db.execute("COMMIT")
            if row is not None:
                self._bytes -= int(row[0])
                self._depth[cluster] -= 1
            self._queued[cluster].discard(seq)
            if left[0] == 0:
                self._meta.pop(seq, None)

    def depth(self, cluster: int) -> int:
        """Batches still waiting for ``cluster``."""
        return self._depth[cluster]

    @property
    def bytes_used(self) -> int:
        """Sum of stored (encrypted) frame bytes."""
        return self._bytes

    def oldest_created_ns(self, cluster: int) -> int | None:
        """Creation time of the oldest batch ``cluster`` has not acknowledged."""
        with self._lock:
            queued = self._queued[cluster]
            return self._meta[min(queued)][0] if queued else None

    def pending_min_ts(self, cluster: int) -> int | None:
        """Oldest reading timestamp of the batches ``cluster`` has not acknowledged."""
        with self._lock:
            meta = self._meta
            return min((meta[s][2] for s in self._queued[cluster]), default=None)

    def pin(self, key: PinnedKey) -> None:
        """Persist a pinned cluster key (authenticated with the spool key)."""
        record = json.dumps(
            {"service_id": key.service_id, "suite": key.suite, "public_key": key.public_key.hex()}
        ).encode()
        blob = self._seal(record, f"tecc-pin-v1|{self._gw}|{key.cluster}".encode())
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?)", (key.cluster, blob))

    def pins(self) -> dict[int, PinnedKey]:
        """All pinned cluster keys, by cluster index."""
        with self._lock:
            rows = self._db.execute("SELECT cluster, record FROM pins").fetchall()
        out: dict[int, PinnedKey] = {}
        for cluster, blob in rows:
            rec = json.loads(self._open(blob, f"tecc-pin-v1|{self._gw}|{cluster}".encode()))
            out[int(cluster)] = PinnedKey(
                int(cluster),
                str(rec["service_id"]),
                str(rec["suite"]),
                bytes.fromhex(rec["public_key"]),
            )
        return out

    def unpin(self, cluster: int) -> int:
        """Forget a cluster's pinned key and drop its unsent envelopes; return how many."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            n = db.execute("SELECT count(*) FROM envelopes WHERE cluster=?", (cluster,)).fetchone()
            db.execute("DELETE FROM envelopes WHERE cluster=?", (cluster,))
            db.execute("DELETE FROM batches WHERE seq NOT IN (SELECT seq FROM envelopes)")
            db.execute("DELETE FROM batch_meta WHERE seq NOT IN (SELECT seq FROM envelopes)")
            db.execute("DELETE FROM pins WHERE cluster=?", (cluster,))
            db.execute("COMMIT")
            self._depth[cluster] = 0
            self._queued[cluster].clear()
            held = set().union(*self._queued)
            self._meta = {s: m for s, m in self._meta.items() if s in held}
            self._bytes = int(
                db.execute("SELECT coalesce(sum(length(frame)), 0) FROM envelopes").fetchone()[0]
            )
        return int(n[0])

    def inflight(self, source: str) -> dict[int, int]:
        """Packet ids and digests of spooled messages whose acknowledgement may be lost."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, tokens FROM inflight WHERE source=? ORDER BY seq", (source,)
            ).fetchall()
        out: dict[int, int] = {}
        for seq, blob in rows:
            try:
                out.update(
                    unpack_tokens(self._inflight_aead.open(blob, self._inflight_aad(seq, source)))
                )
            except SpoolError:
                # a record of a spool written before in-flight records were sealed: without
                # it a message redelivered after that crash is spooled once more (no loss)
                continue
        return out

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self._lock:
            self._db.close()
