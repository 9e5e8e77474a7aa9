"""Pending enrolment and re-quote challenges in the party's JetStream KV (any frontend).

Bucket ``tecc_enrol_nonces``, one key per outstanding nonce, ``n.<nonce hex>``,
value one :class:`ChallengeWire` (msgspec JSON, unknown fields refused),
written with ``Nats-TTL`` = ``enrolment.nonce_ttl_s`` rounded up to whole
seconds, so the server drops it when it expires. A challenge issued by one
frontend is finished at any other; a nonce is single use party-wide: it is
consumed by a delete marker written compare-and-set on the revision the
consumer read, so of two frontends finishing the same nonce at once exactly
one succeeds, and a replay later finds the key deleted (or expired).

The value holds only public data and ``secret_sha256``, the SHA-256 of the
credential's secret (:mod:`cloud_tecc.party.challenges`): whoever reads the
party's NATS storage cannot answer the credential for a TPM it does not hold.
The bucket is bounded (``max_bytes``: ``max_pending`` × 4 KiB, at least
4 MiB; discard new): when it is full a challenge is answered 503 and counted,
and outstanding ones expire within ``nonce_ttl_s``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time
from collections.abc import Callable
from typing import Annotated, Final, Literal

import msgspec
import nats.js.errors
from msgspec import Meta
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from prometheus_client import CollectorRegistry, Counter

from cloud_tecc.jetstream.kv import TRANSIENT, Bucket, KVError, RevisionChangedError
from cloud_tecc.party.challenges import EnrolContext, secret_digest
from cloud_tecc.party.registry import RegistryUnavailableError
from tecc_contract import tpm_evidence as ev

log = logging.getLogger(__name__)

NONCES_BUCKET: Final = "tecc_enrol_nonces"
NONCE_PREFIX: Final = "n."
_PURPOSES: Final = {ev.ENROL_TAG: "enrol", ev.REQUOTE_TAG: "requote"}
_TAGS: Final = {v: k for k, v in _PURPOSES.items()}
_REFUSED: Final = (
    "unknown, already used or expired nonce: ask for a new challenge (nonces are single use)"
)
Hex32 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class ChallengeWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One outstanding challenge in ``tecc_enrol_nonces`` (version 1)."""

    v: Literal[1]
    gateway_id: Annotated[str, Meta(min_length=1, max_length=200)]
    purpose: Literal["enrol", "requote"]
    issued_ns: Annotated[int, Meta(ge=0)]
    secret_sha256: Hex32
    identity_key: Hex32 | None = None  # enrolment only: the context of the second step
    ek_fingerprint: Hex32 | None = None
    ak_public: Annotated[str, Meta(max_length=2048)] | None = None


async def open_nonce_bucket(
    js: JetStreamContext, *, replicas: int = 1, max_pending: int = 1000, timeout_s: float = 30.0
) -> Bucket:
    """Create ``tecc_enrol_nonces`` if missing (idempotent: an existing one is used)."""
    return await open_ttl_bucket(
        js, NONCES_BUCKET, replicas=replicas, max_bytes=max(4 << 20, max_pending * 4096),
        timeout_s=timeout_s,
    )  # fmt: skip


async def open_ttl_bucket(
    js: JetStreamContext,
    name: str,
    *,
    replicas: int = 1,
    max_bytes: int,
    max_value_size: int = 4096,
    timeout_s: float = 30.0,
) -> Bucket:
    """Create the bounded single-use bucket ``name`` if missing (history 1, per-message TTL).

    Idempotent: an existing bucket with other limits is used; one without history 1
    and per-message TTL is refused (single use and expiry depend on both).
    """
    cfg = KeyValueConfig(
        bucket=name,
        history=1,
        replicas=replicas,
        max_bytes=max_bytes,
        max_value_size=max_value_size,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await js.create_key_value(cfg)
            break
        except nats.js.errors.BadRequestError:
            break  # exists with other limits (another max_pending): use it
        except TRANSIENT as exc:
            if time.monotonic() > deadline:
                raise KVError(f"bucket {name} could not be created ({exc!r})") from exc
            await asyncio.sleep(0.2)
    info = await js.stream_info(f"KV_{name}")
    if info.config.max_msgs_per_subject != 1 or not info.config.allow_msg_ttl:
        raise KVError(
            f"bucket {name} exists without history 1 and per-message TTL: delete it "
            f"(nats kv rm {name}) and restart the frontends"
        )
    return Bucket(js, name)


class KvChallenges:
    """The :class:`~cloud_tecc.party.challenges.ChallengeStore` of a party in JetStream."""

    def __init__(
        self,
        *,
        ttl_s: float,
        random: Callable[[int], bytes],
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.ttl_ns = int(ttl_s * 1e9)
        self.ttl_s = max(1, math.ceil(ttl_s))
        self.random = random
        self.bucket: Bucket | None = None
        self.malformed = Counter(
            "tecc_enrolment_nonces_malformed",
            f"Values of {NONCES_BUCKET} refused as malformed",
            registry=metrics if metrics is not None else CollectorRegistry(),
        )

    def _need(self) -> Bucket:
        if self.bucket is None:
            raise RegistryUnavailableError("the challenge store is not connected to the KV yet")
        return self.bucket

    async def issue(
        self, gateway_id: str, purpose: bytes, now_ns: int, context: EnrolContext | None = None
    ) -> ev.Challenge:
        """A fresh challenge, stored for ``nonce_ttl_s`` (its secret only as a digest)."""
        nonce, secret = self.random(ev.NONCE_BYTES), self.random(ev.SECRET_BYTES)
        wire = ChallengeWire(
            v=1,
            gateway_id=gateway_id,
            purpose="enrol" if purpose == ev.ENROL_TAG else "requote",
            issued_ns=now_ns,
            secret_sha256=secret_digest(secret).hex(),
            identity_key=None if context is None else context.identity_key.hex(),
            ek_fingerprint=None if context is None else context.ek_fingerprint,
            ak_public=None if context is None else base64.b64encode(context.ak_public).decode(),
        )
        try:
            await self._need().write(
                NONCE_PREFIX + nonce.hex(), msgspec.json.encode(wire), expected=0, ttl_s=self.ttl_s
            )
        except (*TRANSIENT, nats.js.errors.APIError) as exc:  # full, no quorum, away
            where = f"challenge not stored in {NONCES_BUCKET}"
            raise RegistryUnavailableError(f"{where}: {exc!r}") from exc
        return ev.Challenge(gateway_id, nonce, secret, now_ns, purpose, context)

    async def consume(
        self, nonce: bytes, gateway_id: str, purpose: bytes, now_ns: int
    ) -> ev.Challenge:
        """The challenge of ``nonce``, deleted party-wide (compare-and-set): once only."""
        bucket, key = self._need(), NONCE_PREFIX + nonce.hex()
        try:
            stored = await bucket.get(key)
            if stored is None or stored.value is None:
                raise ev.EvidenceError("nonce", _REFUSED)
            ch = self._decode(stored.value, key, nonce)
            if ch.gateway_id != gateway_id or ch.purpose != purpose:
                raise ev.EvidenceError("nonce", _REFUSED)
            try:
                await bucket.write(
                    key, b"", expected=stored.revision, delete=True, ttl_s=self.ttl_s
                )
            except RevisionChangedError as exc:  # consumed at another frontend just now
                raise ev.EvidenceError("nonce", _REFUSED) from exc
        except (*TRANSIENT, nats.js.errors.APIError) as exc:
            raise RegistryUnavailableError(f"{NONCES_BUCKET}/{key} not read: {exc!r}") from exc
        if ch.issued_ns + self.ttl_ns <= now_ns:
            raise ev.EvidenceError("nonce", _REFUSED)
        return ch

    def _decode(self, raw: bytes, key: str, nonce: bytes) -> ev.Challenge:
        try:
            w = msgspec.json.decode(raw, type=ChallengeWire)
            context = None
            if w.identity_key is not None or w.ek_fingerprint is not None or w.ak_public:
                if w.identity_key is None or w.ek_fingerprint is None or w.ak_public is None:
                    raise ValueError("an enrolment challenge needs all three context fields")
                context = EnrolContext(
                    bytes.fromhex(w.identity_key),
                    w.ek_fingerprint,
                    base64.b64decode(w.ak_public, validate=True),
                )
        except (msgspec.ValidationError, msgspec.DecodeError, binascii.Error, ValueError) as exc:
            self.malformed.inc()
            log.error("%s/%s holds no valid challenge (%s); refused", NONCES_BUCKET, key, exc)
            raise ev.EvidenceError("nonce", _REFUSED) from exc
        return ev.Challenge(
            w.gateway_id,
            nonce,
            bytes.fromhex(w.secret_sha256),
            w.issued_ns,
            _TAGS[w.purpose],
            context,
        )
