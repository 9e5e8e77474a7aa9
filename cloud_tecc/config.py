"""Service configuration: the file schemas (msgspec Structs) and the resolved configs.

A config file is one of three Structs, told apart by its ``role`` key
(:class:`PartyFile`, :class:`DealerFile`, :class:`OutputFile`); field defaults
there are the only defaults. :func:`load_party` / :func:`load_dealer` /
:func:`load_output` convert a file in one step into the frozen runtime config
(:class:`PartyConfig` ...): paths resolved against the file's folder, the
analytics policy file loaded and validated, URLs without a trailing ``/``.

Attestation trust can name concrete values or ``self``: ``platform_keys:
[self]`` trusts the local simulated platform, ``allowed_measurements: [self]``
trusts exactly this service's own build and policy (the usual deployment:
every service runs the same approved bundle).
"""

from __future__ import annotations

import enum
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from cloud_tecc.analytics.policy import AnalyticsPolicy, load_policy
from cloud_tecc.errors import CloudConfigError
from cloud_tecc.output.delivery import DeliveryConfig
from cloud_tecc.output.incidents import Debounce, Rules
from cloud_tecc.party.enrolment_doc import EnrolmentDoc
from tecc_contract.errors import ConfigFileError
from tecc_contract.header import MAX_PARTIES
from tecc_contract.keys import KemSuite
from tecc_contract.manifest import load_owner_public
from tecc_contract.platforms import DEFAULT_PLATFORM, check_platform
from tecc_contract.schema import (
    Count,
    FileSchema,
    HostPort,
    ListenPort,
    Name,
    NonNegative,
    Positive,
    Url,
    convert,
    is_loopback_host,
    read_document,
)

SELF = "self"

#: ``self`` or 64 hex digits (a raw Ed25519 key or a SHA-256 measurement).
Anchor = Annotated[str, Meta(pattern=r"^(self|[0-9a-fA-F]{64})$")]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: Most shard workers per party (``shards``); ``shard`` is 0..shards-1.
MAX_SHARDS = 64
Shards = Annotated[int, Meta(ge=1, le=MAX_SHARDS)]
ShardIndex = Annotated[int, Meta(ge=0, lt=MAX_SHARDS)]
#: Most dealers a party lists for its shard (``dealer:`` as a list: the active one and standbys).
MAX_DEALERS = 8
#: A worker's id in its shard's lease (cloud_tecc/jetstream/lease.py accepts exactly these).
WorkerId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]


def check_shard(shard: int, shards: int) -> None:
    """``shard`` < ``shards`` (party and dealer files); ValueError naming the keys."""
    if shard >= shards:
        raise ValueError(
            f"shard {shard} is not below shards {shards}: write a shard index "
            f"0..{shards - 1}, or raise shards"
        )


class Role(enum.StrEnum):
    """Which service a config describes."""

    PARTY = "party"
    DEALER = "dealer"
    OUTPUT = "output"


def parse_hostport(value: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; CloudConfigError otherwise."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise CloudConfigError(f"expected 'host:port' with a port 0..65535, got {value!r}")
    return host, int(port)


class Endpoint(FileSchema, frozen=True, kw_only=True):
    """Another service: its attested id, base URL and (for MPC links) ``host:port``.

    A party served by several workers (a shard's owner and its standbys,
    docs/CLOUD.md "Leases and takeover") is listed with every worker: ``urls``
    (more base URLs, tried after ``url`` for its quote) and ``mpc`` as a list of
    ``host:port`` (dialled in turn; only the shard's lease holder listens).
    """

    service_id: Name
    url: Url
    urls: tuple[Url, ...] = ()
    mpc: HostPort | tuple[HostPort, ...] | Literal[""] = ""

    @property
    def mpc_address(self) -> tuple[str, int]:
        """The (first) MPC/dealer socket address as (host, port)."""
        return self.mpc_candidates[0]

    @property
    def mpc_candidates(self) -> tuple[tuple[str, int], ...]:
        """Every MPC socket address of this endpoint, in the order to try them."""
        listed = (self.mpc,) if isinstance(self.mpc, str) else self.mpc
        if not listed or not listed[0]:
            raise CloudConfigError(
                f"endpoint {self.service_id!r} needs mpc: 'host:port' (or a list of them)"
            )
        return tuple(parse_hostport(a) for a in listed)

    @property
    def base_urls(self) -> tuple[str, ...]:
        """``url`` then ``urls``: every base URL of the service, in the order to try them."""
        return tuple(dict.fromkeys((self.url, *self.urls)))


class Trust(FileSchema, frozen=True, kw_only=True):
    """``attestation:`` trust anchors: platform keys and allowed measurements (hex or ``self``).

    ``platform_keys`` is either a mapping service id → that service's platform
    key (one platform root per trust domain: a quote of a listed service
    verifies only under its own platform's key), or a list of keys trusted for
    every service (one shared root: not advised). Peers (and, at the dealer,
    the parties) are re-attested every ``reattest_s`` during a session.
    ``platform`` names the TEE platform verifier (``simulated``, the only one
    built in; :mod:`tecc_contract.platforms`).

    ``owner_key``: the path (relative to this file) of the plant owner's public
    key (``owner.pub`` of ``tecc-cluster admin owner-key init``); a quote then
    also passes if the owner-signed manifest at the service's
    ``release_manifest`` (re-read when the file changes, at least every
    ``refresh_s``) lists its measurement, policy digest and role
    (:mod:`cloud_tecc.enclave.releases`). ``allowed_measurements`` unset (null)
    means ``[self]`` without ``owner_key`` and no fixed list with it; both set:
    a quote passes if either allows it (the union), so list a build there only
    to pin it whatever the manifest says.
    """

    platform_keys: tuple[Anchor, ...] | dict[Name, Anchor] = (SELF,)
    allowed_measurements: tuple[Anchor, ...] | None = None
    owner_key: Name | None = None
    max_age_s: Positive = 300.0
    refresh_s: Positive = 30.0
    reattest_s: Positive = 60.0
    # the TEE platform verifier (tecc_contract.platforms): simulated is the only one built in
    platform: Name = DEFAULT_PLATFORM

    def __post_init__(self) -> None:
        check_platform(self.platform, "platform")

    @property
    def fixed_measurements(self) -> tuple[str, ...]:
        """The fixed allow-list: as written, else ``[self]`` unless ``owner_key`` is set."""
        if self.allowed_measurements is not None:
            return self.allowed_measurements
        return () if self.owner_key is not None else (SELF,)

    @property
    def anchors(self) -> tuple[str, ...]:
        """Platform keys trusted for every service (the list form; empty for a mapping)."""
        return () if isinstance(self.platform_keys, dict) else self.platform_keys

    @property
    def domains(self) -> Mapping[str, str]:
        """Service id → its platform key (the mapping form; empty for a list)."""
        return self.platform_keys if isinstance(self.platform_keys, dict) else {}


class Listen(FileSchema, frozen=True, kw_only=True):
    """``listen:`` the HTTP address of the service (port 0: any free port)."""

    host: Name = "127.0.0.1"
    port: ListenPort = 0


class ServiceFile(FileSchema, frozen=True, kw_only=True, tag_field="role"):
    """Keys every service file has.

    ``release_manifest``: the file the plant owner signed (``tecc-cluster admin
    sign-manifest``), served at ``GET /v1/manifest`` to gateways that trust the
    owner's key (null: 404).
    """

    service_id: Name
    state_dir: Name
    listen: Listen = Listen()
    platform_dir: Name = "platform"
    policy: Name = "policy.yaml"
    attestation: Trust = Trust()
    log_level: LogLevel = "INFO"
    # the owner-signed release manifest served at GET /v1/manifest (cloud_tecc/service/manifest.py)
    release_manifest: Name | None = None


class JetStreamConfig(FileSchema, frozen=True, kw_only=True):
    """``jetstream:`` the party's durable share log (docs/CLOUD.md, "JetStream layout").

    ``servers``: the party's NATS URLs (the credential comes from
    ``<state_dir>/nats/nats.password`` unless a URL carries one); or ``embedded:
    true``: the party process starts one node under its state dir (on the port of
    ``servers[0]`` if given). ``max_bytes``: the share stream's limit (full → the
    frontends answer 503); ``max_age_s`` ≥ the party's ``retention_s``.
    """

    servers: tuple[Annotated[str, Meta(pattern=r"^(nats|tls)://\S+$")], ...] = ()
    embedded: bool = False
    replicas: Literal[1, 3] = 1
    max_bytes: Annotated[int, Meta(ge=1 << 20)] = 1 << 30
    max_age_s: Positive = 86_400.0
    duplicate_window_s: Positive = 600.0
    #: TTL of the shard lease this worker writes (whole seconds, docs/CLOUD.md
    #: "Leases and takeover"): the longest a dead owner holds its shard.
    lease_ttl_s: Annotated[int, Meta(ge=1, le=600)] = 3
    #: How long an owner whose lease renewals fail *transiently* (timeouts, no stream
    #: leader: a JetStream node died) keeps its role past the TTL, retrying, before it
    #: stands down (docs/CLOUD.md "Riding out a leader election"); about one Raft
    #: election. Safety rests on the fenced commits, not on this; 0 = stand down at
    #: the TTL. A refused renewal (another owner) ends the term at once regardless.
    lease_grace_s: Annotated[float, Meta(ge=0, le=600)] = 6.0
    #: A standby stores its shard's parts from the log while it waits, so a takeover
    #: reads only what came after (docs/CLOUD.md "Leases and takeover"); costs the
    #: standby the owner's store CPU. false: a takeover reads the shard's whole history.
    standby_follows: bool = True

    def __post_init__(self) -> None:
        if not self.servers and not self.embedded:
            raise ValueError(
                "servers is empty: list the party's NATS URLs (nats://host:port), "
                "or write embedded: true to start one node with the party"
            )
        if self.embedded and self.replicas != 1:
            raise ValueError(
                "replicas: 3 needs a 3-node cluster: an embedded node holds one replica; "
                "write replicas: 1, or embedded: false with the cluster's servers"
            )
        if self.duplicate_window_s > self.max_age_s:
            raise ValueError(
                f"duplicate_window_s ({self.duplicate_window_s:g}) exceeds max_age_s "
                f"({self.max_age_s:g}): write a window no longer than the stream's age limit"
            )


class PartyFile(ServiceFile, frozen=True, kw_only=True, tag="party"):
    """``role: party`` — a cluster party: ingest, MPC peer and result sender.

    Rules: ``party`` < ``n_parties``; ``peers`` lists every other party index
    (0..n_parties-1 except ``party``) exactly once, each with ``mpc``; ``dealer``
    is one endpoint with ``mpc``, or a list of up to 8 (the shard's dealer and its
    standbys, in the order party 0 tries them; docs/CLOUD.md "Dealer standby"),
    each with ``mpc`` and its own ``service_id``. The ``policy`` file it names is
    checked too. ``listen`` serves
    HTTPS (``tls``); ``tls: off`` only on a loopback ``listen.host``, or with
    ``insecure_plain_http: true``. ``hpke_rotation_s`` > 0 rotates the HPKE key
    in both layouts: with ``jetstream:`` the party's ingest frontends share one
    sealed key ring in its KV (``tecc_hpke``) and exactly one of them writes each
    rotation (docs/CLOUD.md, "HPKE key rotation in the JetStream layout").
    """

    party: Annotated[int, Meta(ge=0, lt=MAX_PARTIES)]
    peers: dict[int, Endpoint]
    # one dealer, or the shard's dealers in the order party 0 tries them (all parties of a
    # shard list the same ones, in the same order)
    dealer: Endpoint | Annotated[tuple[Endpoint, ...], Meta(min_length=1, max_length=MAX_DEALERS)]
    output: Endpoint
    n_parties: Annotated[int, Meta(ge=2, le=MAX_PARTIES)] = 2
    suite: KemSuite = KemSuite.X25519
    gateways: dict[str, str] = msgspec.field(default_factory=dict)
    mpc_listen: HostPort = "127.0.0.1:0"
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    tick_s: Positive = 0.2
    retention_s: Positive = 86_400.0
    active_s: Positive = 60.0
    # Rotate the cluster HPKE key this often (0: never); the previous key keeps opening
    # envelopes for hpke_overlap_s (longer than the gateways' re-attestation interval).
    # With jetstream: the party's ingest frontends share one key ring in its KV
    # (tecc_hpke/ring) and one of them rotates it (docs/CLOUD.md "HPKE key rotation").
    hpke_rotation_s: NonNegative = 0.0
    hpke_overlap_s: Positive = 3600.0
    # Gateways enrolling by TPM attestation (docs/CLOUD.md, "Gateway enrolment")
    enrolment: EnrolmentDoc = EnrolmentDoc()

    # HTTPS on `listen` (the gateways' uplink): true = a key generated in the enclave, its
    # SPKI digest in every quote; {cert, key} = the operator's PEM pair; off = plain HTTP,
    # loopback only unless insecure_plain_http: true.
    tls: bool | TlsDoc = True
    insecure_plain_http: bool = False
    # The durable share log (absent: this process ingests into its own SQLite store)
    jetstream: JetStreamConfig | None = None
    # K shard workers per party: this worker's shard; its peers and dealer are shard k's
    # (docs/CLOUD.md, "Shards")
    shards: Shards = 1
    shard: ShardIndex = 0
    # This worker's id in the shard's lease (jetstream: only); "" = <service_id>-<host>-<pid>
    worker_id: WorkerId | Literal[""] = ""

    def __post_init__(self) -> None:
        check_shard(self.shard, self.shards)
        if self.jetstream is not None and self.jetstream.max_age_s < self.retention_s:
            raise ValueError(
                f"jetstream.max_age_s ({self.jetstream.max_age_s:g}) is below retention_s "
                f"({self.retention_s:g}): the log would drop shares the party still keeps; "
                "raise jetstream.max_age_s to at least retention_s"
            )
        if self.party >= self.n_parties:
            raise ValueError(
                f"party {self.party} is not below n_parties {self.n_parties}: write a party "
                f"index 0..{self.n_parties - 1}, or raise n_parties"
            )
        plain = self.tls is False and not self.insecure_plain_http
        if plain and not is_loopback_host(self.listen.host):
            raise ValueError(
                f"tls: off on the non-loopback listen.host {self.listen.host!r} would take "
                "the gateways' uploads in clear: remove tls (HTTPS is the default), or add "
                "insecure_plain_http: true to accept plain HTTP off this host"
            )
        if self.insecure_plain_http and self.tls is not False:
            raise ValueError("insecure_plain_http: true needs tls: off (or remove it)")
        others = set(range(self.n_parties)) - {self.party}
        if set(self.peers) != others:
            missing, extra = sorted(others - set(self.peers)), sorted(set(self.peers) - others)
            raise ValueError(
                f"peers must name every other party of the {self.n_parties} "
                f"(n_parties) exactly once: write entries for {sorted(others)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not another party here: {extra}" if extra else "")
            )
        for i, ep in self.peers.items():
            if not ep.mpc:
                raise ValueError(f"peers.{i} needs mpc: 'host:port' (its MPC socket)")
        check_dealers(self.dealer)


def dealer_list(dealer: Endpoint | tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """A party file's ``dealer:`` (one endpoint or a list) as the list of dealers."""
    return (dealer,) if isinstance(dealer, Endpoint) else dealer


def check_dealers(dealer: Endpoint | tuple[Endpoint, ...]) -> None:
    """Every dealer has ``mpc`` and its own service id; ValueError naming the key."""
    dealers = dealer_list(dealer)
    seen: dict[str, int] = {}
    for n, ep in enumerate(dealers):
        key = "dealer" if isinstance(dealer, Endpoint) else f"dealer[{n}]"
        if not ep.mpc:
            raise ValueError(f"{key} needs mpc: 'host:port' (its /dealer socket)")
        if ep.service_id in seen:
            raise ValueError(
                f"{key}.service_id {ep.service_id!r} repeats dealer[{seen[ep.service_id]}]'s: "
                "every dealer is its own attested trust domain; write the service_id its "
                "quote names (e.g. dealer, dealer2)"
            )
        seen[ep.service_id] = n


def check_parties(parties: Mapping[int, Endpoint]) -> None:
    """``parties`` names the N >= 2 parties 0..N-1, each once (dealer and output files)."""
    n = len(parties)
    if n < 2 or n > MAX_PARTIES or set(parties) != set(range(n)):
        raise ValueError(
            f"parties must name the parties 0..N-1 (2 <= N <= {MAX_PARTIES}), each once: "
            f"got {sorted(parties)}; write one entry per party, e.g. {{0: ..., 1: ..., 2: ...}} "
            "for three clusters"
        )


class DealerFile(ServiceFile, frozen=True, kw_only=True, tag="dealer"):
    """``role: dealer`` — the dealer of correlated randomness.

    Rules: ``parties`` names the N >= 2 parties 0..N-1 (N = the parties' ``n_parties``).
    """

    parties: dict[int, Endpoint]
    mpc_listen: HostPort = "127.0.0.1:0"
    batch_readings: Count = 20_000
    depth: Annotated[int, Meta(ge=1, le=64)] = 4
    suite: KemSuite = KemSuite.X25519  # link suite of the dealer links: the parties' suite
    shards: Shards = 1  # the dealer of shard `shard` of `shards` (one dealer per shard)
    shard: ShardIndex = 0

    def __post_init__(self) -> None:
        check_shard(self.shard, self.shards)
        check_parties(self.parties)


class DebounceDoc(FileSchema, frozen=True, kw_only=True):
    """An incident rule: open after ``open_after`` flags within ``within_s``; close after quiet.

    ``of_readings`` = n > 0 replaces ``within_s`` by a count: open once
    ``open_after`` = m of the last n readings the detector evaluated were
    flagged (m of n).

    Rules: ``of_readings`` is 0 or >= ``open_after``.
    """

    open_after: Annotated[int, Meta(ge=1, le=1000)] = 1
    within_s: Annotated[float, Meta(gt=0, le=86_400)] = 60.0
    quiet_s: Annotated[float, Meta(gt=0, le=86_400)] = 30.0
    of_readings: Annotated[int, Meta(ge=0, le=100_000)] = 0

    def __post_init__(self) -> None:
        if self.of_readings and self.of_readings < self.open_after:
            raise ValueError(
                f"of_readings ({self.of_readings}) must be 0 or >= open_after ({self.open_after})"
            )


class IncidentsDoc(FileSchema, frozen=True, kw_only=True):
    """``incidents:`` debounce per detector, retention and storage caps of the output.

    Rules: ``max_flags_per_incident`` <= ``max_flag_rows``.
    """

    default: DebounceDoc = DebounceDoc()
    detectors: dict[Name, DebounceDoc] = msgspec.field(default_factory=dict)
    retention_s: Annotated[float, Meta(ge=60, le=10 * 365 * 86_400)] = 7 * 86_400.0
    max_flags_per_incident: Annotated[int, Meta(ge=1, le=100_000_000)] = 1_000
    max_flag_rows: Annotated[int, Meta(ge=1, le=100_000_000)] = 1_000_000

    def __post_init__(self) -> None:
        if self.max_flags_per_incident > self.max_flag_rows:
            raise ValueError("max_flags_per_incident must be <= max_flag_rows")


class TlsDoc(FileSchema, frozen=True, kw_only=True):
    """``auth.tls`` / a party's ``tls``: a certificate and key (PEM files) for a listener."""

    cert: Name
    key: Name


class HostPortDoc(FileSchema, frozen=True, kw_only=True):
    """A separate listener (``host``, ``port``)."""

    host: Name = "127.0.0.1"
    port: ListenPort


class OidcDoc(FileSchema, frozen=True, kw_only=True):
    """``auth.oidc``: sign-in with an OpenID Connect issuer (code + PKCE), bearer JWTs."""

    issuer: Url
    client_id: Name
    client_secret: str = ""
    audience: str = ""  # of API bearer tokens; default: client_id
    role_claim: Name = "tecc_role"
    redirect_url: str = ""  # default: https://<host>/auth/oidc/callback of the request


class AuthDoc(FileSchema, frozen=True, kw_only=True):
    """``auth:`` who may read the output, and over what transport."""

    allowed_hosts: tuple[Name, ...] = ()  # Host values besides the listener's own names
    tls: TlsDoc | None = None
    ops_listen: HostPortDoc | None = None  # /metrics and /healthz on their own listener
    intake_listen: HostPortDoc | None = None  # /attestation and /v1/results apart
    session_ttl_s: Annotated[float, Meta(ge=60, le=30 * 86_400)] = 12 * 3600.0
    oidc: OidcDoc | None = None


class OutputFile(ServiceFile, frozen=True, kw_only=True, tag="output"):
    """``role: output`` — reconstruction, storage, incidents, delivery and the JSON API.

    Rules: ``parties`` names the N >= 2 parties 0..N-1; an epoch is reconstructed
    from all N.
    """

    parties: dict[int, Endpoint]
    # gateway id → health URL (shown on the dashboard)
    gateways: dict[str, Url] = msgspec.field(default_factory=dict)
    # party index → base URLs of its shard workers, standbys and ingest frontends, whose
    # /healthz the cluster cards show (a party not listed: its url and urls)
    workers: dict[int, tuple[Url, ...]] = msgspec.field(default_factory=dict)
    incidents: IncidentsDoc = IncidentsDoc()
    auth: AuthDoc = AuthDoc()
    units: dict[str, str] = msgspec.field(default_factory=dict)  # sensor glob → axis unit
    # Incident transitions to Alertmanager, webhooks and MQTT (docs/CLOUD.md, "Delivery")
    delivery: DeliveryConfig = DeliveryConfig()

    def __post_init__(self) -> None:
        check_parties(self.parties)
        unknown = sorted(set(self.workers) - set(self.parties))
        if unknown:
            raise ValueError(
                f"workers names parties {unknown} that parties does not: write one entry per "
                f"party index of parties ({sorted(self.parties)}), or remove it"
            )


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Settings shared by every service, resolved (paths absolute, policy loaded)."""

    role: Role
    service_id: str
    host: str
    port: int
    state_dir: Path
    platform_dir: Path
    policy_path: Path
    policy: AnalyticsPolicy
    trust: Trust
    log_level: str
    release_manifest: Path | None = None
    owner_key: bytes | None = None  # raw Ed25519 public key (attestation.owner_key)


@dataclass(frozen=True, slots=True)
class PartyConfig:
    """A cluster party (from :class:`PartyFile`)."""

    service: ServiceConfig
    party: int
    n_parties: int
    suite: KemSuite
    gateways: Mapping[str, str]
    peers: Mapping[int, Endpoint]
    #: The shard's dealers in the order party 0 tries them (the file's one ``dealer`` or list).
    dealers: tuple[Endpoint, ...]
    output: Endpoint
    mpc_listen: str
    synchronous: str
    tick_s: float
    retention_s: float
    active_s: float
    hpke_rotation_s: float
    hpke_overlap_s: float
    # ek_ca_files resolved to absolute paths
    enrolment: EnrolmentDoc = field(default_factory=EnrolmentDoc)
    #: HTTPS on the listener; ``tls_files``: the operator's (cert, key), else the enclave's key.
    tls: bool = True
    tls_files: tuple[Path, Path] | None = None
    #: The durable share log (None: the all-in-one party with its own /v1/batches).
    jetstream: JetStreamConfig | None = None
    shards: int = 1
    shard: int = 0
    #: The shard lease's worker id (resolved: never empty).
    worker_id: str = ""

    @property
    def dealer(self) -> Endpoint:
        """The first dealer of the list (the one used while it answers)."""
        return self.dealers[0]


@dataclass(frozen=True, slots=True)
class DealerConfig:
    """The dealer (from :class:`DealerFile`)."""

    service: ServiceConfig
    parties: Mapping[int, Endpoint]
    mpc_listen: str
    batch_readings: int
    depth: int
    suite: KemSuite
    shards: int = 1
    shard: int = 0


@dataclass(frozen=True, slots=True)
class IncidentConfig:
    """``incidents:`` resolved (from :class:`IncidentsDoc`)."""

    rules: Rules
    retention_s: float
    max_flags_per_incident: int
    max_flag_rows: int


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """``auth.oidc:`` resolved (from :class:`OidcDoc`)."""

    issuer: str
    client_id: str
    client_secret: str
    audience: str
    role_claim: str
    redirect_url: str


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``auth:`` resolved (from :class:`AuthDoc`); an empty host/port 0 means no listener."""

    allowed_hosts: tuple[str, ...]
    tls_cert: Path | None
    tls_key: Path | None
    ops_host: str
    ops_port: int
    intake_host: str
    intake_port: int
    session_ttl_s: float
    oidc: OidcConfig | None


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """The output service (from :class:`OutputFile`)."""

    service: ServiceConfig
    parties: Mapping[int, Endpoint]
    gateways: Mapping[str, str]
    #: party index → the base URLs whose /healthz the cluster cards show (every party)
    workers: Mapping[int, tuple[str, ...]]
    incidents: IncidentConfig
    auth: AuthConfig
    units: Mapping[str, str]
    delivery: DeliveryConfig
    config_dir: Path  # the config file's folder (delivery secret files are relative to it)


_SCHEMAS: dict[object, type[PartyFile] | type[DealerFile] | type[OutputFile]] = {
    Role.PARTY.value: PartyFile,
    Role.DEALER.value: DealerFile,
    Role.OUTPUT.value: OutputFile,
}


def parse_file(path: Path) -> PartyFile | DealerFile | OutputFile:
    """Read any service file (its ``role`` picks the schema); CloudConfigError names the key."""
    raw = _document(path)
    role = raw.get("role") if isinstance(raw, dict) else None
    schema = _SCHEMAS.get(role) if isinstance(role, str) else None
    if schema is None:
        raise CloudConfigError(
            f"{path}: $.role: write one of {', '.join(r.value for r in Role)} (got {role!r})"
        )
    return convert(raw, schema, source=str(path), error=CloudConfigError)


def _document(path: Path) -> object:
    try:
        return read_document(path)
    except ConfigFileError as exc:
        raise CloudConfigError(str(exc)) from exc


def _clean(ep: Endpoint) -> Endpoint:
    return msgspec.structs.replace(
        ep, url=ep.url.rstrip("/"), urls=tuple(u.rstrip("/") for u in ep.urls)
    )


def _policy(f: ServiceFile, base: Path) -> tuple[Path, AnalyticsPolicy]:
    path = (base / f.policy).resolve()
    try:
        return path, load_policy(path)
    except CloudConfigError as exc:
        raise CloudConfigError(f"$.policy names an invalid analytics policy: {exc}") from exc


def _owner_key(f: ServiceFile, base: Path) -> bytes | None:
    """The raw owner key of ``attestation.owner_key``; CloudConfigError saying what to write."""
    name = f.attestation.owner_key
    if name is None:
        return None
    if f.release_manifest is None:
        raise CloudConfigError(
            "attestation.owner_key needs release_manifest: write the path of the manifest file "
            "the owner signed (tecc-cluster admin sign-manifest), or remove owner_key"
        )
    path = (base / name).resolve()
    try:
        return load_owner_public(path.read_text(encoding="utf-8")).public_bytes_raw()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CloudConfigError(
            f"attestation.owner_key: {path} is not a readable owner public key ({exc}); write "
            "the path of owner.pub (tecc-cluster admin owner-key init)"
        ) from exc


def _service(f: ServiceFile, base: Path, role: Role) -> ServiceConfig:
    policy_path, policy = _policy(f, base)
    return ServiceConfig(
        role=role,
        service_id=f.service_id,
        host=f.listen.host,
        port=f.listen.port,
        state_dir=(base / f.state_dir).resolve(),
        platform_dir=(base / f.platform_dir).resolve(),
        policy_path=policy_path,
        policy=policy,
        trust=f.attestation,
        log_level=f.log_level,
        release_manifest=(
            None if f.release_manifest is None else (base / f.release_manifest).resolve()
        ),
        owner_key=_owner_key(f, base),
    )


def party_config(f: PartyFile, base: Path) -> PartyConfig:
    """The resolved party config of a parsed file whose folder is ``base``."""
    return PartyConfig(
        service=_service(f, base, Role.PARTY),
        party=f.party,
        n_parties=f.n_parties,
        suite=f.suite,
        gateways=dict(f.gateways),
        peers={i: _clean(ep) for i, ep in f.peers.items()},
        dealers=tuple(_clean(ep) for ep in dealer_list(f.dealer)),
        output=_clean(f.output),
        mpc_listen=f.mpc_listen,
        synchronous=f.synchronous,
        tick_s=f.tick_s,
        retention_s=f.retention_s,
        active_s=f.active_s,
        hpke_rotation_s=f.hpke_rotation_s,
        hpke_overlap_s=f.hpke_overlap_s,
        enrolment=msgspec.structs.replace(
            f.enrolment, ek_ca_files=[str(base / p) for p in f.enrolment.ek_ca_files]
        ),
        tls=f.tls is not False,
        tls_files=(
            ((base / f.tls.cert).resolve(), (base / f.tls.key).resolve())
            if isinstance(f.tls, TlsDoc)
            else None
        ),
        jetstream=f.jetstream,
        shards=f.shards,
        shard=f.shard,
        worker_id=f.worker_id or default_worker_id(f.service_id),
    )


def default_worker_id(service_id: str) -> str:
    """``<service_id>-<hostname>-<pid>``, reduced to the characters a lease accepts."""
    raw = f"{service_id}-{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", raw)[:128]


def dealer_config(f: DealerFile, base: Path) -> DealerConfig:
    """The resolved dealer config of a parsed file whose folder is ``base``."""
    return DealerConfig(
        service=_service(f, base, Role.DEALER),
        parties={i: _clean(ep) for i, ep in f.parties.items()},
        mpc_listen=f.mpc_listen,
        batch_readings=f.batch_readings,
        depth=f.depth,
        suite=f.suite,
        shards=f.shards,
        shard=f.shard,
    )


def output_config(f: OutputFile, base: Path) -> OutputConfig:
    """The resolved output config of a parsed file whose folder is ``base``."""
    return OutputConfig(
        service=_service(f, base, Role.OUTPUT),
        parties={i: _clean(ep) for i, ep in f.parties.items()},
        gateways=dict(f.gateways),
        workers={
            i: tuple(u.rstrip("/") for u in f.workers.get(i, ())) or _clean(ep).base_urls
            for i, ep in f.parties.items()
        },
        incidents=_incidents(f.incidents),
        auth=_auth(f.auth, base),
        units=dict(f.units),
        delivery=f.delivery,
        config_dir=base.resolve(),
    )


def _debounce(d: DebounceDoc) -> Debounce:
    return Debounce(d.open_after, d.within_s, d.quiet_s, d.of_readings)


def _incidents(d: IncidentsDoc) -> IncidentConfig:
    rules = Rules(_debounce(d.default), {k: _debounce(v) for k, v in d.detectors.items()})
    return IncidentConfig(rules, d.retention_s, d.max_flags_per_incident, d.max_flag_rows)


def _auth(d: AuthDoc, base: Path) -> AuthConfig:
    o = d.oidc
    oidc = (
        None
        if o is None
        else OidcConfig(
            o.issuer.rstrip("/"), o.client_id, o.client_secret, o.audience, o.role_claim,
            o.redirect_url,
        )
    )  # fmt: skip
    return AuthConfig(
        allowed_hosts=d.allowed_hosts,
        tls_cert=None if d.tls is None else (base / d.tls.cert).resolve(),
        tls_key=None if d.tls is None else (base / d.tls.key).resolve(),
        ops_host=d.ops_listen.host if d.ops_listen else "",
        ops_port=d.ops_listen.port if d.ops_listen else 0,
        intake_host=d.intake_listen.host if d.intake_listen else "",
        intake_port=d.intake_listen.port if d.intake_listen else 0,
        session_ttl_s=d.session_ttl_s,
        oidc=oidc,
    )


F = TypeVar("F", PartyFile, DealerFile, OutputFile)
C = TypeVar("C", PartyConfig, DealerConfig, OutputConfig)


def _in(path: Path, build: Callable[[F, Path], C], f: F) -> C:
    """``build(f, folder)``, with errors of the files it reads prefixed by this file's path."""
    try:
        return build(f, path.parent)
    except CloudConfigError as exc:
        raise CloudConfigError(f"{path}: {exc}") from exc


def load_party(path: Path) -> PartyConfig:
    """Load a party config (``role: party``)."""
    f = convert(_document(path), PartyFile, source=str(path), error=CloudConfigError)
    return _in(path, party_config, f)


def load_dealer(path: Path) -> DealerConfig:
    """Load a dealer config (``role: dealer``)."""
    f = convert(_document(path), DealerFile, source=str(path), error=CloudConfigError)
    return _in(path, dealer_config, f)


def load_output(path: Path) -> OutputConfig:
    """Load an output-service config (``role: output``)."""
    f = convert(_document(path), OutputFile, source=str(path), error=CloudConfigError)
    return _in(path, output_config, f)


def load_any(path: Path) -> PartyConfig | DealerConfig | OutputConfig:
    """Load a service config of any role (what ``check-config`` does)."""
    f = parse_file(path)
    if isinstance(f, PartyFile):
        return _in(path, party_config, f)
    if isinstance(f, DealerFile):
        return _in(path, dealer_config, f)
    return _in(path, output_config, f)
