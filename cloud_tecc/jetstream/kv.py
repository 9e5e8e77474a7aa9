"""The party's JetStream key-value buckets: typed records, compare-and-set, the shard map.

Three buckets hold a party's small shared state (see docs/CLOUD.md "Leases and
takeover"):

- ``tecc_leases``: one key per shard, the owner record of :mod:`.lease`;
- ``tecc_commits``: one key per shard, the committed state of :mod:`.commits`;
- ``tecc_shards``: one key, the shard map (:mod:`.shardmaps`).

Every value is a msgspec JSON record with unknown fields forbidden, so a value
written by another version or by hand is refused with the bucket and key named,
never half-read. Every write that must not race is a compare-and-set: the
publish carries ``Nats-Expected-Last-Subject-Sequence`` (the key's revision the
writer read; 0 for "absent"), and JetStream's stream leader refuses it with
error 10071 when the key moved on. Reads go to the stream leader
(``STREAM.MSG.GET``, the buckets are created without direct get), so a writer
reads its own writes even in an R=3 cluster.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec
import nats
import nats.aio.client
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RawStreamMsg

from cloud_tecc.errors import CloudError

log = logging.getLogger(__name__)

LEASES_BUCKET: Final = "tecc_leases"
COMMITS_BUCKET: Final = "tecc_commits"
SHARDS_BUCKET: Final = "tecc_shards"
SHARD_MAP_KEY: Final = "map"

#: JetStream error codes of a failed ``Nats-Expected-Last-Subject-Sequence`` check.
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_KV_OP: Final = "KV-Operation"
_MARKER_REASON: Final = "Nats-Marker-Reason"

#: What a lost connection, a timeout or a cluster without a leader raise in nats-py.
TRANSIENT: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)


class KVError(CloudError):
    """A party's key-value bucket holds something unexpected or stays unreachable."""


class RevisionChangedError(KVError):
    """A compare-and-set write found the key at another revision (someone else wrote)."""


#: Full-jitter exponential backoff of a compare-and-set loop that lost a race:
#: without it two writers that re-read in lockstep can starve one of them (the
#: same one wins every round), and a burst of N writers costs N² writes.
CAS_BACKOFF_BASE_S: Final = 0.002
CAS_BACKOFF_CAP_S: Final = 0.25
_JITTER: Final = random.SystemRandom()


async def contention_pause(attempt: int, *, rng: random.Random = _JITTER) -> None:
    """Sleep before compare-and-set retry ``attempt`` (0 = after the first loss).

    The delay is uniform in [0, min(cap, base * 2**attempt)] ("full jitter"),
    so concurrent losers spread out instead of colliding again; it is timing,
    not a secret, but the generator is the OS one like every other draw here.
    """
    ceiling = min(CAS_BACKOFF_CAP_S, CAS_BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    await asyncio.sleep(rng.uniform(0.0, ceiling))


class FencedError(KVError):
    """A write carried an older lease token than the record's: a newer owner holds the shard."""


def shard_key(shard: int) -> str:
    """The key of ``shard`` in the lease and commit buckets."""
    return f"shard.{shard}"


@dataclass(frozen=True, slots=True)
class Stored:
    """One key's latest message: its revision, and its value (None = deleted or purged)."""

    revision: int
    value: bytes | None
    marker: bytes = b""  # the body of a delete marker (a released lease's record)


R = TypeVar("R", bound=msgspec.Struct)


def decode(raw: bytes, kind: type[R], *, bucket: str, key: str) -> R:
    """``raw`` as a ``kind`` record, or KVError naming the bucket, key and problem."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise KVError(
            f"{bucket}/{key} holds no valid {kind.__name__} ({exc}); delete the key "
            f"(nats kv del {bucket} {key}) and let the workers write it again"
        ) from exc


class Bucket:
    """One KV bucket through the JetStream API: get, compare-and-set, delete markers."""

    def __init__(self, js: JetStreamContext, name: str, *, timeout_s: float = 2.0) -> None:
        self.js = js
        self.name = name
        self.stream = f"KV_{name}"
        self.timeout_s = timeout_s

    def subject(self, key: str) -> str:
        """The stream subject of ``key``."""
        return f"$KV.{self.name}.{key}"

    async def get(self, key: str) -> Stored | None:
        """The latest message of ``key`` (None when the key never existed or expired)."""
        try:
            msg: RawStreamMsg = await asyncio.wait_for(
                self.js.get_msg(self.stream, subject=self.subject(key)), self.timeout_s
            )
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        deleted = _KV_OP in headers or _MARKER_REASON in headers
        if msg.seq is None:
            raise KVError(f"{self.name}/{key}: the server answered without a sequence")
        data = msg.data or b""
        return Stored(msg.seq, None, data) if deleted else Stored(msg.seq, data)

    async def write(
        self,
        key: str,
        value: bytes,
        *,
        expected: int,
        ttl_s: int | None = None,
        delete: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        """Store ``value`` iff ``key`` is at revision ``expected`` (0 = absent); its revision.

        ``ttl_s`` sets the message's own TTL (``Nats-TTL``, whole seconds: the server
        truncates fractions); ``delete`` writes a delete marker carrying ``value``.
        Raises RevisionChangedError when the key moved on.
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": str(expected)}
        if ttl_s is not None:
            headers["Nats-TTL"] = f"{ttl_s}s"
        if delete:
            headers[_KV_OP] = "DEL"
        try:
            ack = await asyncio.wait_for(
                self.js.publish(self.subject(key), value, headers=headers),
                self.timeout_s if timeout_s is None else timeout_s,
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise RevisionChangedError(
                    f"{self.name}/{key} is no longer at revision {expected}"
                ) from exc
            raise
        return int(ack.seq)


async def connect(servers: list[str], **options: Any) -> nats.aio.client.Client:
    """Connect to the party's JetStream with the credential as options, not only in URLs.

    nats-py adds the cluster's gossiped client URLs (``host:port``, no credential)
    to its server pool and, after a node dies, may reconnect through one of them
    with no user: "Authorization Violation". Passing user/password as options
    makes every reconnect authenticate.
    """
    parsed = [urllib.parse.urlsplit(url) for url in servers]
    users = {(p.username, p.password) for p in parsed if p.username}
    if len(users) > 1:
        raise KVError("jetstream.servers: every URL must carry the same party credential")
    if users:
        user, password = users.pop()
        options.setdefault("user", urllib.parse.unquote(user or ""))
        options.setdefault("password", urllib.parse.unquote(password or ""))
    bare = [p._replace(netloc=p.netloc.rpartition("@")[2]).geturl() for p in parsed]
    options.setdefault("connect_timeout", 2)
    options.setdefault("reconnect_time_wait", 0.2)
    options.setdefault("max_reconnect_attempts", -1)
    return await nats.connect(servers=bare, **options)


async def open_bucket(
    js: JetStreamContext,
    name: str,
    *,
    replicas: int = 1,
    history: int = 1,
    timeout_s: float = 30.0,
) -> Bucket:
    """Create ``name`` if missing (idempotent), check its settings, return it.

    A fresh cluster may still be electing its meta leader: transient errors are
    retried until ``timeout_s``. A bucket with other settings than these code
    paths rely on (one value per key, per-message TTL allowed) is refused.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await js.create_key_value(
                KeyValueConfig(bucket=name, history=history, replicas=replicas)
            )
            info = await js.stream_info(f"KV_{name}")
            break
        except nats.js.errors.BadRequestError as exc:
            # Exists with other settings (e.g. another replica count): use it if it fits.
            try:
                info = await js.stream_info(f"KV_{name}")
            except TRANSIENT:
                if time.monotonic() > deadline:
                    raise KVError(f"bucket {name} unreachable: {exc}") from exc
                await asyncio.sleep(0.2)
                continue
            break
        except TRANSIENT as exc:
            if time.monotonic() > deadline:
                raise KVError(
                    f"bucket {name} could not be created within {timeout_s:.0f} s ({exc!r}); "
                    "check jetstream.servers and that a quorum of nodes runs"
                ) from exc
            await asyncio.sleep(0.2)
    cfg = info.config
    if cfg.max_msgs_per_subject != history or not cfg.allow_msg_ttl:
        raise KVError(
            f"bucket {name} exists with history {cfg.max_msgs_per_subject} and "
            f"allow_msg_ttl {cfg.allow_msg_ttl}; it needs history {history} and per-message "
            f"TTL: delete it (nats kv rm {name}) and restart the workers"
        )
    return Bucket(js, name)
