"""A shard's committed state in ``tecc_commits``, fenced by the lease token.

Per shard one record: the committed epoch watermark (end of the last computed
epoch, ns — what today's ``ShareStore.watermark()`` returns), the end of the last
epoch released to the output service, and the share-log position the state
covers. A standby that takes the shard over resumes from this record and the log.

Fencing. Every write names the writer's lease token (:attr:`Lease.token`, the
revision of its acquiring write; it only grows from owner to owner). The record
keeps the highest token that wrote it, and a write is a compare-and-set on the
revision it read:

1. read the record at revision r;
2. if the record's token is above ours: refuse (:class:`FencedError`) — a newer
   owner has written, so we are a stale owner (e.g. woken from SIGSTOP);
3. write with ``expected = r``; if the key moved on, go back to 1.

So a stale owner's write either reads the newer owner's token (refused at 2) or
raced with it (refused at 3, then at 2). The new owner calls :meth:`claim`
before it acts: from then on nothing from an older token lands, even if the
old owner never noticed it lost the lease. A write never checks the lease
bucket itself — the token in this record is the single point of truth.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from cloud_tecc.jetstream.kv import (
    COMMITS_BUCKET,
    Bucket,
    FencedError,
    KVError,
    RevisionChangedError,
    decode,
    open_bucket,
    shard_key,
)


class CommitRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The committed state of one shard."""

    shard: int
    fence: int  # the highest lease token that wrote this record
    worker_id: str  # who wrote it last
    watermark_ns: int = 0  # end of the last committed epoch (0 before the first)
    released_ns: int = 0  # end of the last epoch released to the output service
    log_seq: int = 0  # last share-log sequence the committed state includes
    updated_ns: int = 0  # writer's wall clock at the write


class CommittedState:
    """Load and fenced compare-and-set writes of one shard's :class:`CommitRecord`."""

    def __init__(self, bucket: Bucket, *, shard: int, attempts: int = 20) -> None:
        self.bucket = bucket
        self.shard = shard
        self.key = shard_key(shard)
        self.attempts = attempts

    @classmethod
    async def open(cls, js: JetStreamContext, *, shard: int, replicas: int = 1) -> CommittedState:
        """The committed state of ``shard`` over the party's ``tecc_commits`` bucket."""
        return cls(await open_bucket(js, COMMITS_BUCKET, replicas=replicas), shard=shard)

    async def load(self) -> CommitRecord | None:
        """The stored record (None before the shard's first commit)."""
        record, _ = await self._read()
        return record

    async def _read(self) -> tuple[CommitRecord | None, int]:
        stored = await self.bucket.get(self.key)
        if stored is None:
            return None, 0
        if stored.value is None:
            return None, stored.revision
        record = decode(stored.value, CommitRecord, bucket=self.bucket.name, key=self.key)
        if record.shard != self.shard:
            raise KVError(
                f"{self.bucket.name}/{self.key} holds shard {record.shard}'s record; "
                "delete the key so the owner rewrites it"
            )
        return record, stored.revision

    async def claim(self, *, fence: int, worker_id: str, now_ns: int) -> CommitRecord:
        """Raise the record's token to ``fence`` (a new owner, before acting); the record."""
        return await self._write(fence=fence, worker_id=worker_id, now_ns=now_ns, change={})

    async def commit(
        self,
        *,
        fence: int,
        worker_id: str,
        now_ns: int,
        watermark_ns: int,
        released_ns: int | None = None,
        log_seq: int | None = None,
    ) -> CommitRecord:
        """Store a committed epoch (and what was released / how far the log was read).

        Raises FencedError when a newer owner wrote the record (``fence`` is stale).
        The watermark may go back (agreement rewinds to the common watermark).
        """
        change: dict[str, int] = {"watermark_ns": watermark_ns}
        if released_ns is not None:
            change["released_ns"] = released_ns
        if log_seq is not None:
            change["log_seq"] = log_seq
        return await self._write(fence=fence, worker_id=worker_id, now_ns=now_ns, change=change)

    async def release(
        self, *, fence: int, worker_id: str, now_ns: int, released_ns: int
    ) -> CommitRecord:
        """Store that the output accepted the epochs through ``released_ns`` (fenced)."""
        change = {"released_ns": released_ns}
        return await self._write(fence=fence, worker_id=worker_id, now_ns=now_ns, change=change)

    async def _write(
        self, *, fence: int, worker_id: str, now_ns: int, change: dict[str, int]
    ) -> CommitRecord:
        if fence < 1:
            raise FencedError(
                f"shard {self.shard}: fence {fence} is no lease token; pass lease.token "
                "of a held lease"
            )
        for _ in range(self.attempts):
            current, revision = await self._read()
            if current is not None and current.fence > fence:
                raise FencedError(
                    f"shard {self.shard}: write with lease token {fence} refused, "
                    f"{current.worker_id} wrote with the newer token {current.fence}: "
                    "this worker no longer owns the shard (if the tecc_leases bucket was "
                    f"recreated, delete {self.bucket.name}/{self.key} once)"
                )
            base = current or CommitRecord(shard=self.shard, fence=fence, worker_id=worker_id)
            record = msgspec.structs.replace(
                base, fence=fence, worker_id=worker_id, updated_ns=now_ns, **change
            )
            try:
                await self.bucket.write(self.key, msgspec.json.encode(record), expected=revision)
            except RevisionChangedError:
                continue
            return record
        raise KVError(
            f"shard {self.shard}: {self.attempts} commit attempts lost to concurrent writers; "
            "two workers act for one shard — check their leases"
        )
