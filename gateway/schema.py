"""The gateway config file (``configs/gateway.yaml``) as msgspec Structs.

These Structs are the schema: their field defaults are the only defaults and
their bounds and ``__post_init__`` rules the only validation.
:func:`gateway.config_yaml.load_config` converts a file in one step into the
runtime :class:`~gateway.config.GatewayConfig` (paths resolved, hex decoded,
``password_file`` read, sensors keyed by id).
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from msgspec import Meta

from gateway.config import (
    MAX_SQUARE_ABS,
    DeadbandType,
    PayloadFormat,
    SecurityMode,
    SecurityPolicy,
    check_topic,
)
from gateway.sources.modbus_config import ModbusSourceConfig
from tecc_contract.fixedpoint import MAX_ABS_RANGE
from tecc_contract.keys import KemSuite
from tecc_contract.platforms import DEFAULT_PLATFORM, check_platform
from tecc_contract.scale import Scale
from tecc_contract.schema import (
    Count,
    FileSchema,
    Finite,
    Hex32,
    ListenPort,
    Name,
    NonNegative,
    Port,
    Positive,
    Url,
    is_loopback_host,
)


class Schema(FileSchema, frozen=True, kw_only=True):
    """Base of the gateway file's sections."""


class SensorDoc(Schema, frozen=True, kw_only=True):
    """``sensors[i]``: a declared sensor; readings outside ``range`` are rejected.

    Readings are shared scaled, ``(x − offset)/2^e``, with ``offset`` and ``e``
    derived from ``scale_range`` (default: ``range``) and
    ``envelope.value_bound_bits``, so any range keeps about 2^−28 of its width
    as resolution (docs/GATEWAY.md). Sensors compared as one fleet class must
    share one scale: give them the same ``scale_range`` (e.g. the union of
    their ranges).

    Rules: low < high, both within ±2^30 (``range`` and ``scale_range``).
    """

    id: Name
    range: tuple[Finite, Finite]
    unit: str = ""
    scale_range: tuple[Finite, Finite] | None = None

    def __post_init__(self) -> None:
        for key, pair in (("range", self.range), ("scale_range", self.scale_range)):
            if pair is None:
                continue
            low, high = pair
            if not low < high:
                raise ValueError(f"{key} of {self.id!r} needs low < high, e.g. [0, 150]")
            if max(abs(low), abs(high)) > MAX_ABS_RANGE:
                raise ValueError(f"{key} of {self.id!r} exceeds ±2^30; rescale the unit")


class TopicDoc(Schema, frozen=True, kw_only=True):
    """``topics[i]``: MQTT filter -> sensor id template and payload format.

    Rules: ``+`` and ``#`` stand alone in a level, ``#`` only last; the template uses
    ``{0}``..``{n-1}`` for the n wildcards.
    """

    filter: Name
    sensor_template: Name
    format: PayloadFormat = PayloadFormat.NUMBER
    value_path: Name = "value"  # dotted path into a JSON payload
    timestamp_path: Name | None = None

    def __post_init__(self) -> None:
        if self.format is PayloadFormat.SPARKPLUG_B:
            # the sensor id comes from the metric: {group}, {node}, {device}, {metric}
            try:
                self.sensor_template.format(group="g", node="n", device="d", metric="m")
            except (IndexError, KeyError, ValueError) as exc:
                raise ValueError(
                    f"a sparkplug_b sensor_template names {{group}}, {{node}}, {{device}} and "
                    f"{{metric}}, e.g. '{{node}}.{{device}}.{{metric}}'; got "
                    f"{self.sensor_template!r}"
                ) from exc
            if not self.filter.startswith(("spBv1.0/", "#", "+")):
                raise ValueError("a sparkplug_b filter covers spBv1.0/..., e.g. spBv1.0/plant/#")
            return
        check_topic(self.filter, self.sensor_template)


class TlsDoc(Schema, frozen=True, kw_only=True):
    """``tls``: PEM files (relative to the config file)."""

    ca_file: Name
    cert_file: Name | None = None
    key_file: Name | None = None


class MqttDoc(Schema, frozen=True, kw_only=True):
    """``sources.mqtt[i]``: one broker connection.

    Rules: ``password`` or ``password_file``, not both; the file must be readable.
    """

    client_id: Name  # fixed, so the broker keeps the session across restarts
    topics: Annotated[tuple[TopicDoc, ...], Meta(min_length=1)]
    name: Name = "mqtt"
    host: Name = "127.0.0.1"
    port: Port = 1883
    username: Name | None = None
    password: str | None = None
    password_file: Name | None = None
    tls: TlsDoc | None = None
    session_expiry_s: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 7 * 24 * 3600
    keepalive_s: Annotated[int, Meta(ge=1, le=65535)] = 30

    def __post_init__(self) -> None:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")


class DeadbandDoc(Schema, frozen=True, kw_only=True):
    """``deadband``: OPC-UA data-change filter."""

    type: DeadbandType = DeadbandType.ABSOLUTE
    value: NonNegative = 0.0


class NodeDoc(Schema, frozen=True, kw_only=True):
    """``nodes[i]``: an explicit OPC-UA node and the sensor it feeds."""

    node_id: Name
    sensor: Name
    sampling_ms: NonNegative = 100.0
    queue_size: Count = 10
    deadband: DeadbandDoc | None = None


class BrowseDoc(Schema, frozen=True, kw_only=True):
    """``browse[i]``: subscribe every variable below ``folder``."""

    folder: Name
    sensor_template: Name = "{name}"
    sampling_ms: NonNegative = 100.0
    queue_size: Count = 10
    deadband: DeadbandDoc | None = None


class SecurityDoc(Schema, frozen=True, kw_only=True):
    """``security``: OPC-UA policy, mode and the gateway's certificate.

    Rules: ``Basic256Sha256`` needs ``certificate`` and ``private_key``.
    """

    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.SIGN_AND_ENCRYPT
    certificate: Name | None = None
    private_key: Name | None = None
    server_certificate: Name | None = None  # an explicit trust list of one
    application_uri: Name | None = None  # default: the URI in the certificate
    pin_server: bool = True  # pin the server certificate at first use (state dir)

    def __post_init__(self) -> None:
        if self.policy is not SecurityPolicy.NONE and (
            self.certificate is None or self.private_key is None
        ):
            raise ValueError("policy Basic256Sha256 needs certificate and private_key paths")


class OpcuaDoc(Schema, frozen=True, kw_only=True):
    """``sources.opcua[i]``: one OPC-UA server.

    Rules: ``nodes`` or ``browse`` (or both); ``reconnect_min_s`` <=
    ``reconnect_max_s``.
    """

    url: Annotated[str, Meta(pattern=r"^opc\.tcp://\S+$")]
    name: Name = "opcua"
    nodes: tuple[NodeDoc, ...] = ()
    browse: tuple[BrowseDoc, ...] = ()
    security: SecurityDoc = SecurityDoc()
    publishing_ms: NonNegative = 100.0
    subscribe_batch: Count = 500
    reconnect_min_s: Positive = 0.5
    reconnect_max_s: Positive = 30.0

    def __post_init__(self) -> None:
        if not self.nodes and not self.browse:
            raise ValueError(f"opcua source {self.name!r}: configure nodes or browse folders")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must be <= reconnect_max_s")


class SourcesDoc(Schema, frozen=True, kw_only=True):
    """``sources``: where readings come from."""

    mqtt: tuple[MqttDoc, ...] = ()
    opcua: tuple[OpcuaDoc, ...] = ()
    modbus: tuple[ModbusSourceConfig, ...] = ()  # gateway/sources/modbus_config.py


class BatchingDoc(Schema, frozen=True, kw_only=True):
    """``batching``: a batch is cut at ``max_readings`` or ``max_delay_s``, whichever first.

    Rules: ``max_pending`` >= ``max_readings``.
    """

    max_readings: Count = 20_000
    max_delay_s: Positive = 0.25
    max_pending: Count = 2_000_000  # readings held while cluster keys are unknown

    def __post_init__(self) -> None:
        if self.max_pending < self.max_readings:
            raise ValueError("max_pending must be >= max_readings")


class ProgressDoc(Schema, frozen=True, kw_only=True):
    """``progress``: signed notices that let the clusters close a window (docs/GATEWAY.md)."""

    slack_s: NonNegative = 1.0
    interval_s: Positive = 0.25
    settle_s: NonNegative = 2.0
    max_hold_s: NonNegative = 60.0
    ordered_sensors: bool = True
    # Sensors that deliver history (a replayed recording): their bound is their own newest
    # timestamp however old; silent for backfill_idle_s, they count as caught up.
    backfill_sensors: tuple[Name, ...] = ()
    backfill_idle_s: Positive = 30.0
    # Stamped further ahead of the gateway clock: rejected (future_timestamp), never
    # moves the progress.
    max_future_skew_s: Annotated[float, Meta(ge=0, le=3600)] = 5.0

    def __post_init__(self) -> None:
        if self.backfill_sensors and not self.ordered_sensors:
            raise ValueError(
                "backfill_sensors needs ordered_sensors: true (a backfill sensor's progress is "
                "its newest timestamp, which holds only for ordered streams)"
            )


class SpoolDoc(Schema, frozen=True, kw_only=True):
    """``spool``: the encrypted store-and-forward file; default ``<state_dir>/spool.db``."""

    path: Name | None = None
    max_bytes: Annotated[int, Meta(ge=1 << 16)] = 1 << 30


class ClusterDoc(Schema, frozen=True, kw_only=True):
    """``clusters[i]``: a TECC cluster, its party index, ingest URL(s) and attested id.

    ``url`` names the cluster's one ingest endpoint; ``urls`` lists several
    (the ingest frontends of one party, tried in turn on failure or overload:
    docs/GATEWAY.md, "Several ingest endpoints"). Exactly one of the two.
    Rules: with ``tls`` on (the default) every URL is ``https://`` and the
    server's key must be the one the cluster's quote binds (claim
    ``tls_spki``, the same key on every endpoint); ``tls_ca_file``
    additionally verifies the certificate chain and host name against that
    CA. ``tls: off`` needs ``http://`` URLs on loopback hosts, or
    ``insecure_plain_http: true`` for any other host.
    """

    index: Annotated[int, Meta(ge=0)]
    url: Url | None = None
    urls: Annotated[tuple[Url, ...], Meta(min_length=1, max_length=64)] | None = None
    service_id: Name
    role: Literal["party"] = "party"
    tls: bool = True
    tls_ca_file: Name | None = None
    insecure_plain_http: bool = False

    def endpoints(self) -> tuple[str, ...]:
        """The ingest base URLs in configured order (``url`` alone or ``urls``)."""
        if self.urls is not None:
            return self.urls
        return () if self.url is None else (self.url,)

    def __post_init__(self) -> None:
        if (self.url is None) == (self.urls is None):
            raise ValueError(
                "give exactly one of url (one ingest endpoint) and urls (a list of the "
                "cluster's ingest endpoints)"
                + (": remove one of them" if self.url is not None else "")
            )
        key = "url" if self.urls is None else "urls"
        seen = [u.rstrip("/") for u in self.endpoints()]
        dup = sorted({u for u in seen if seen.count(u) > 1})
        if dup:
            raise ValueError(f"urls lists {dup[0]!r} twice: give each endpoint once")
        if not self.tls and self.tls_ca_file is not None:
            raise ValueError("tls_ca_file needs tls on: remove tls: off or tls_ca_file")
        if self.tls and self.insecure_plain_http:
            raise ValueError("insecure_plain_http: true needs tls: off (or remove it)")
        for url in self.endpoints():
            self._check(key, url)

    def _check(self, key: str, url: str) -> None:
        scheme, _, rest = url.partition("://")
        host = urlsplit(url).hostname or rest
        if self.tls:
            if scheme != "https":
                raise ValueError(
                    f"{key} {url!r} is plain HTTP but tls is on (the default): write "
                    "https://… (the party's listener serves TLS), or tls: off for a loopback "
                    "cluster without TLS"
                )
            return
        if scheme != "http":
            raise ValueError(f"{key} {url!r} is https:// but tls: off: write http://…")
        if not is_loopback_host(host) and not self.insecure_plain_http:
            raise ValueError(
                f"tls: off to the non-loopback host {host!r} ({key}) would send the uplink in "
                "clear (readable and delayable on the path): remove tls: off (TLS is the "
                "default), or add insecure_plain_http: true to this cluster to accept that"
            )


class AttestationDoc(Schema, frozen=True, kw_only=True):
    """``attestation``: platform keys and measurements a cluster quote must match.

    ``allowed_measurements`` may be empty when ``trust.owner_key`` is set (the
    builds the plant owner signs are allowed; both set: either is enough).
    ``platform``: the TEE platform verifier (``simulated``).
    """

    platform_keys: Annotated[dict[str, Hex32], Meta(min_length=1)]  # id -> Ed25519 key
    allowed_measurements: tuple[Hex32, ...] = ()
    max_age_s: Positive = 300.0
    platform: Name = DEFAULT_PLATFORM

    def __post_init__(self) -> None:
        check_platform(self.platform, "platform")


class OwnerTrustDoc(Schema, frozen=True, kw_only=True):
    """``trust``: accept the cluster builds the plant owner's release manifest lists.

    ``owner_key``: the owner's Ed25519 public key, inline (base64 of the 32
    raw bytes, or 64 hex digits) or the path of a file holding it (PEM or
    base64; ``tecc-cluster admin owner-key init`` writes ``owner.pub``).
    Each attested cluster's ``GET /v1/manifest`` is fetched every
    ``refresh_s`` (and at its attestations, at most that often); a newer
    manifest makes every cluster re-attest; one issued more than ``max_skew_s`` ahead of the
    gateway's clock is refused.
    """

    owner_key: Name
    refresh_s: Positive = 30.0
    max_skew_s: Positive = 300.0


class TpmDoc(Schema, frozen=True, kw_only=True):
    """``tpm``: how to reach the TPM and the PCRs the sealed keys are bound to."""

    tcti: Name = "swtpm:port=2321"
    pcrs: Annotated[tuple[Annotated[int, Meta(ge=0, le=23)], ...], Meta(min_length=1)] = (7, 14)
    pcr_bank: Literal["sha1", "sha256", "sha384", "sha512"] = "sha256"
    # The PCR the launcher extends with code and config before unsealing (null: none).
    measure_pcr: Annotated[int, Meta(ge=8, le=15)] | None = 14
    owner_auth_file: Name | None = None  # the owner hierarchy's auth, when set
    # Enrol with the clusters by TPM attestation (EK certificate, AK, quotes) and re-quote.
    enrol: bool = False

    def __post_init__(self) -> None:
        if self.measure_pcr is not None:
            if self.measure_pcr not in self.pcrs:
                raise ValueError(
                    f"measure_pcr {self.measure_pcr} must be one of pcrs {list(self.pcrs)} "
                    "(or null to bind the keys without a launch measurement)"
                )
            if self.pcr_bank != "sha256":
                raise ValueError("measure_pcr needs pcr_bank: sha256")


class HttpDoc(Schema, frozen=True, kw_only=True):
    """``http``: listen address of ``/healthz`` and ``/metrics``."""

    host: Name = "127.0.0.1"
    port: ListenPort = 9100


class EnvelopeDoc(Schema, frozen=True, kw_only=True):
    """``envelope``: KEM suite and the columns each reading is shared in.

    Rules: ``columns`` holds ``value`` once and may add ``square``.
    """

    suite: KemSuite = KemSuite.X25519
    columns: tuple[Literal["value", "square"], ...] = ("value",)
    # scaled |x'| < 2^value_bound_bits: must equal the analytics policy's value_bound_bits;
    # each sensor's scale derives from it, a reading beyond it is rejected
    # (beyond_value_bound), never wrapped. null: no bound and no scaling (benchmarks only).
    value_bound_bits: Annotated[int, Meta(ge=1, le=30)] | None = 12

    def __post_init__(self) -> None:
        if "value" not in self.columns or len(set(self.columns)) != len(self.columns):
            raise ValueError(
                f"columns must include value once and may add square, got {self.columns}"
            )


class GatewayFile(Schema, frozen=True, kw_only=True):
    """The gateway agent's config file.

    Rules: sensor ids unique; cluster indices 0..N-1 with N >= 2; OPC-UA ``nodes`` feed
    declared sensors; with the ``square`` column every scaled value stays within ±2^23.
    """

    gateway_id: Name
    sensors: Annotated[tuple[SensorDoc, ...], Meta(min_length=1)]
    clusters: tuple[ClusterDoc, ...]
    attestation: AttestationDoc
    trust: OwnerTrustDoc | None = None
    state_dir: Name = "var/gateway"
    sources: SourcesDoc = SourcesDoc()
    batching: BatchingDoc = BatchingDoc()
    progress: ProgressDoc = ProgressDoc()
    spool: SpoolDoc = SpoolDoc()
    tpm: TpmDoc = TpmDoc()
    http: HttpDoc = HttpDoc()
    envelope: EnvelopeDoc = EnvelopeDoc()

    def __post_init__(self) -> None:
        if not self.attestation.allowed_measurements and self.trust is None:
            raise ValueError(
                "attestation.allowed_measurements is empty and trust.owner_key is not set, so "
                "no cluster build would be accepted: list the measurements (`tecc-cluster "
                "measure`), or add trust: {owner_key: owner.pub} to accept the builds the "
                "plant owner signs"
            )
        ids = [s.id for s in self.sensors]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"sensor ids must be unique; repeated: {dupes}")
        idx = sorted(c.index for c in self.clusters)
        if len(idx) < 2 or idx != list(range(len(idx))):
            raise ValueError(f"clusters need indices 0..N-1 with N >= 2, got {idx}")
        sids = [c.service_id for c in self.clusters]
        if len(set(sids)) != len(sids):
            raise ValueError(
                f"clusters[].service_id must differ per cluster, got {sids}: N clusters are N "
                "independent trust domains (write each cluster's own service id)"
            )
        if undeclared := [
            f"sources.opcua[{i}].nodes[{j}].sensor: {n.sensor!r}"
            for i, s in enumerate(self.sources.opcua)
            for j, n in enumerate(s.nodes)
            if n.sensor not in ids
        ]:
            raise ValueError(
                f"{'; '.join(undeclared)} is not under sensors: add it there (- {{id: ID, "
                "range: [LOW, HIGH], unit: UNIT}), or delete that nodes entry too (removing "
                "a sensor means removing its sensors line and its nodes entry)"
            )
        polled = {x for s in self.sources.modbus for x in s.sensors()}
        if undeclared := sorted(polled - set(ids)):
            raise ValueError(f"Modbus points feed undeclared sensors {undeclared}; declare them")
        if unknown := sorted(set(self.progress.backfill_sensors) - set(ids)):
            raise ValueError(
                f"progress.backfill_sensors names undeclared sensors {unknown}; "
                "list ids from 'sensors'"
            )
        self._check_scales()

    def _check_scales(self) -> None:
        """Scales reach the declared ranges; x² of a shared value fits the ring."""
        bits = self.envelope.value_bound_bits
        if bits is not None:
            outside = []
            for s in self.sensors:
                low, high = Scale.for_range(*(s.scale_range or s.range), bits).inner(bits)
                if s.range[0] >= high or s.range[1] <= low:
                    outside.append(s.id)
            if outside:
                raise ValueError(
                    f"sensors {outside} declare a scale_range disjoint from their range: "
                    "every reading would be refused as beyond_value_bound; write a scale_range "
                    "that covers the range (or drop it)"
                )
        if "square" in self.envelope.columns:
            too_wide = [
                s.id
                for s in self.sensors
                if (bits is None and max(map(abs, s.range)) >= MAX_SQUARE_ABS)
                or (bits is not None and 2.0**bits >= MAX_SQUARE_ABS)
            ]
            if too_wide:
                raise ValueError(
                    f"sensors {too_wide} reach |v| >= 2^23 as shared, so x² overflows the ring "
                    "at 16 fraction bits; set envelope.value_bound_bits <= 22 (it scales every "
                    "range) or drop the square column"
                )
