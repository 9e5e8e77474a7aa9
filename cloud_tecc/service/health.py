"""The health documents the cloud services serve and read from each other, as msgspec Structs.

A party process (the all-in-one party, a JetStream shard worker, an ingest
frontend) serves :class:`PartyHealth` at ``GET /healthz``; the output service
polls every party process it knows (``workers:`` in its config, default every
``parties.<i>`` URL) and decodes each answer once, here
(:func:`decode_party_health`), into the same Struct; the cluster cards of the
dashboard and ``/api/v1/clusters`` are built from those values
(:mod:`cloud_tecc.output.clusterhealth`). The gateway's ``/healthz``, which the
output relays to the dashboard, is :class:`GatewayHealthDoc`.

**Unknown fields are ignored, on purpose** (unlike the configs and the control
messages, which refuse them). A health document crosses a version boundary in
normal operation: during a rolling upgrade a newer worker or gateway adds a field
while the output still runs the previous release, and an operator's dashboard
must keep showing the fields it knows instead of marking the process
unreachable. Nothing in a health document is trusted for a decision (it is
unauthenticated metadata; the data path attests and signs everything), so a
field the reader does not know cannot do harm by being dropped: the output
serves only the fields declared here, never the raw document. Wrong *types* of
known fields are still refused (strict decoding), and the document is bounded
(:data:`MAX_HEALTH_BYTES`) before it is parsed.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeVar

import msgspec
from msgspec import Meta

#: Largest health document the output reads from one process (a party's lists every
#: gateway, so this bounds how much one answer can make the poller hold).
MAX_HEALTH_BYTES: Final = 256 * 1024

Seconds = Annotated[float, Meta(ge=0)]
T = TypeVar("T", bound=msgspec.Struct)


class HealthDoc(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Fields every cloud service's ``/healthz`` carries. Unknown fields are ignored (above).

    Optional fields whose value is ``None`` (or ``False``) are left out of the
    encoded document: a process has only the keys of its kind, as before these
    Structs (a reader's ``doc.get(key, default)`` keeps working).
    """

    status: str
    #: The service kind (``party``, ``dealer``, ``output``); a JetStream shard worker
    #: puts its lease role here instead: ``owner`` (the active worker), ``standby``
    #: or ``starting``.
    role: str
    service_id: str
    #: The owner-signed release manifest in force (with ``attestation.owner_key``).
    release_manifest: ManifestHealth | None = None


class ManifestHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The release manifest a service trusts builds from (:mod:`cloud_tecc.enclave.releases`)."""

    owner_key_id: str
    issued_ns: int | None = None
    not_after_ns: int | None = None
    entries: Annotated[int, Meta(ge=0)] = 0
    expired: bool = False


class LeaseHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A shard worker's view of its shard's lease."""

    worker_id: str
    #: The holder this worker saw last ("" while free or not read yet).
    owner: str
    #: Seconds since this worker acquired the lease (0 when it does not hold it).
    lease_age_s: Seconds
    #: Seconds since the current holder acquired it (its own wall clock), None unknown.
    owner_lease_age_s: Seconds | None
    #: The fencing token of this worker's term (0 when not held).
    token: Annotated[int, Meta(ge=0)]
    #: A following standby: the share-log sequence its store holds the shard through
    #: (the ack floor read last) and the last recorded epoch message it applied; None
    #: with ``jetstream.standby_follows: false``.
    follow_floor: Annotated[int, Meta(ge=0)] | None = None
    follow_epoch_seq: Annotated[int, Meta(ge=0)] | None = None


class LogHealth(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """A shard worker's consumer of the party's log."""

    shard: Annotated[int, Meta(ge=0)]
    connected: bool
    #: Progress notices waiting for their share parts to be stored.
    notices_waiting: Annotated[int, Meta(ge=0)]
    #: Seconds since the consumer last had nothing pending (None: not yet).
    caught_up_s_ago: Seconds | None = None
    #: Share parts of this shard in the log not consumed yet (JetStream ``num_pending``
    #: as the last fetch or consumer info said); None while no consumer runs (standby).
    pending_parts: Annotated[int, Meta(ge=0)] | None = None
    #: Consumer lag in seconds: 0 when nothing is pending, else how long ago the part
    #: consumed last was published (an upper bound of the oldest pending part's age).
    lag_s: Seconds | None = None
    #: When the part consumed last was published (the log's timestamp, ns).
    last_part_ns: Annotated[int, Meta(ge=0)] | None = None


class PeerHealth(msgspec.Struct, frozen=True, kw_only=True):
    """What this party knows of one peer's (or the dealer's) attestation."""

    attested: bool
    detail: str
    checked_ns: int | None = None


class GatewayProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A party's view of one gateway: its progress, silence and liveness."""

    through_s: float
    silent_s: float
    live: bool


class ShardMapHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The shard map a frontend or worker routes by (:mod:`cloud_tecc.jetstream.shardmaps`)."""

    version: int | None = None
    id: str | None = None
    effective_ns: int | None = None
    #: The last refused record's reason (None: the stored map is in use).
    error: str | None = None


class HpkeRingHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The HPKE key ring a frontend opens and quotes by (:mod:`cloud_tecc.jetstream.hpkekv`)."""

    version: int | None = None
    #: hpke_key_digest of the current key (what the quotes carry, hashed).
    current: str | None = None
    since_ns: int | None = None
    #: Whether the previous key still opens envelopes.
    overlap: bool = False
    #: The last refused value's reason (None: the stored ring is in use).
    error: str | None = None


class DealerUseHealth(msgspec.Struct, frozen=True, kw_only=True):
    """Which of the shard's dealers the session uses (:mod:`cloud_tecc.party.dealer_choice`)."""

    #: The dealer's service id (None before the first session).
    in_use: str | None = None
    generation: Annotated[int, Meta(ge=0)] = 0
    #: Sessions that started on another dealer than the one before.
    failovers: Annotated[int, Meta(ge=0)] = 0
    listed: tuple[str, ...] = ()


class PartyHealth(HealthDoc, frozen=True, kw_only=True, omit_defaults=True):
    """``GET /healthz`` of a party process: all-in-one party, shard worker or frontend.

    A frontend sets ``frontend``, ``shards`` and ``log_connected``; a party or
    shard worker ``shard``, ``shards``, its store and session; a shard worker
    (``jetstream:``) also ``worker_id``, ``lease`` and ``log``. The fields a kind
    does not have are left out of its document.
    """

    party: Annotated[int, Meta(ge=0)]
    n_parties: Annotated[int, Meta(ge=1)] | None = None
    shard: Annotated[int, Meta(ge=0)] | None = None
    shards: Annotated[int, Meta(ge=1)] | None = None
    frontend: bool = False
    log_connected: bool | None = None
    worker_id: str | None = None
    #: End of the last committed epoch (ns; 0 before the first).
    watermark_ns: Annotated[int, Meta(ge=0)] | None = None
    batches: Annotated[int, Meta(ge=0)] | None = None
    #: Lag in readings: readings stored here that no committed epoch covers yet (batches
    #: with a reading at or after ``watermark_ns``; None on a standby).
    readings_waiting: Annotated[int, Meta(ge=0)] | None = None
    session: str | None = None
    #: The furthest watermark the peers (the same shard's workers of the other parties)
    #: sent in the last agreement round, and how many whole epochs this worker is behind
    #: it (None: no round yet, or a standby).
    peers_watermark_ns: int | None = None
    epochs_behind_peers: Annotated[int, Meta(ge=0)] | None = None
    lease: LeaseHealth | None = None
    log: LogHealth | None = None
    gateways: dict[str, GatewayProgress] | None = None
    enrolment: dict[str, str] | None = None
    #: Seconds since this process last confirmed its copy of the party's enrolment KV
    #: (JetStream layout only).
    enrolment_sync_age_s: Annotated[float, Meta(ge=0)] | None = None
    peers: dict[str, PeerHealth] | None = None
    shard_map: ShardMapHealth | None = None
    hpke: HpkeRingHealth | None = None
    dealer: DealerUseHealth | None = None


class GatewayLinkHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway's uplink to one cluster, as its ``/healthz`` says."""

    attested: bool = False
    depth: Annotated[int, Meta(ge=0)] = 0  # frames spooled for this cluster
    progress_s: float | None = None
    last_error: str | None = None
    endpoint: str | None = None


class GatewayHealthDoc(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of an edge gateway's ``/healthz`` the output relays (unknown ones ignored)."""

    gateway_id: str
    sealing: bool | None = None
    spool_overflow: bool | None = None
    backlog: Annotated[int, Meta(ge=0)] | None = None
    #: The backfill sensors still holding progress at their own event time.
    backfilling: tuple[str, ...] = ()
    clusters: dict[str, GatewayLinkHealth] = msgspec.field(default_factory=dict)


class HealthDecodeError(ValueError):
    """A health document that is not JSON of the expected shape (names the field)."""


def decode_party_health(raw: bytes) -> PartyHealth:
    """A party process's ``/healthz`` body, decoded once (HealthDecodeError otherwise)."""
    return _decode(raw, PartyHealth)


def decode_gateway_health(raw: bytes) -> GatewayHealthDoc:
    """A gateway's ``/healthz`` body, decoded once (HealthDecodeError otherwise)."""
    return _decode(raw, GatewayHealthDoc)


def _decode(raw: bytes, kind: type[T]) -> T:
    if len(raw) > MAX_HEALTH_BYTES:
        raise HealthDecodeError(f"health document of {len(raw)} bytes > {MAX_HEALTH_BYTES}")
    try:
        return msgspec.json.decode(raw, type=kind, strict=True)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise HealthDecodeError(f"health document: {exc}") from exc


def to_json(doc: msgspec.Struct) -> dict[str, object]:
    """``doc`` as the JSON object a handler answers."""
    out = msgspec.to_builtins(doc)
    if not isinstance(out, dict):
        raise TypeError(f"{type(doc).__name__} does not encode as an object")
    return out
