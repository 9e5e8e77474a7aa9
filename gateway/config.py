"""Validated, frozen configuration of the gateway agent, loaded from YAML.

These are the resolved, in-memory types the agent uses; they have no
defaults and no validation of their own. The file's schema (defaults, bounds,
cross-field rules) is :mod:`gateway.schema`, and
:func:`gateway.config_yaml.load_config` converts a validated file into these
types in one step. See ``configs/gateway.yaml`` and docs/CONFIG.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.sources.modbus_config import ModbusSourceConfig
from tecc_contract.fixedpoint import SensorRange
from tecc_contract.scale import IDENTITY, Scale


class PayloadFormat(enum.StrEnum):
    """How an MQTT payload carries its reading(s)."""

    NUMBER = "number"  # the payload is the decimal text of one number
    JSON = "json"  # a JSON object; value (and optional timestamp) at configured paths
    JSON_BATCH = "json_batch"  # a JSON array of such objects (or of plain numbers)
    AUTO = "auto"  # per payload: '[' -> json_batch, '{' -> json, otherwise number
    SPARKPLUG_B = "sparkplug_b"  # Sparkplug B (spBv1.0 topics): births, aliases, seq, deaths


class DeadbandType(enum.StrEnum):
    """OPC-UA data-change deadband kinds (OPC 10000-4 §7.22.2)."""

    NONE = "none"
    ABSOLUTE = "absolute"
    PERCENT = "percent"


class SecurityPolicy(enum.StrEnum):
    """OPC-UA security policies the gateway accepts."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"


class SecurityMode(enum.StrEnum):
    """OPC-UA message security modes used with Basic256Sha256."""

    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


def check_topic(topic_filter: str, sensor_template: str) -> None:
    """ValueError unless ``topic_filter`` is an MQTT filter that ``sensor_template`` fits."""
    levels = topic_filter.split("/")
    if any(("+" in lv or "#" in lv) and len(lv) > 1 for lv in levels):
        raise ValueError(f"invalid MQTT topic filter {topic_filter!r}: + and # stand alone")
    if "#" in levels[:-1]:
        raise ValueError(f"'#' must be the last level of topic filter {topic_filter!r}")
    n = sum(lv in ("+", "#") for lv in levels)
    try:
        sensor_template.format(*(["x"] * n))
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(
            f"sensor_template {sensor_template!r} does not fit filter {topic_filter!r} "
            f"({n} wildcard captures, use {{0}}..{{{max(n - 1, 0)}}})"
        ) from exc


#: |v| bound for sharing x² with 16 fraction bits: (2^23)² · 2^16 = 2^62.
MAX_SQUARE_ABS = float(2**23)


@dataclass(frozen=True, slots=True)
class SensorConfig:
    """A declared sensor: id, physical range and unit.

    ``scale_range`` is the range its affine scale derives from
    (:meth:`tecc_contract.scale.Scale.for_range`; ``None``: ``range``). Sensors
    of one fleet class share one scale, so they declare one ``scale_range``.
    """

    id: str
    range: SensorRange
    unit: str
    scale_range: SensorRange | None = None

    def scale(self, value_bound_bits: int | None) -> Scale:
        """The scale its readings are shared in (identity when there is no value bound)."""
        if value_bound_bits is None:
            return IDENTITY
        r = self.scale_range or self.range
        return Scale.for_range(r.low, r.high, value_bound_bits)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS material for an MQTT connection (paths to PEM files)."""

    ca_file: Path
    cert_file: Path | None
    key_file: Path | None


@dataclass(frozen=True, slots=True)
class TopicRule:
    """Maps an MQTT topic filter to sensor ids and a payload format.

    ``sensor_template`` is a :meth:`str.format` template whose positional
    fields are the wildcard captures of ``filter`` in order (``+`` captures
    one level, ``#`` the rest), e.g. filter ``plant/+/+/value`` with template
    ``{0}.{1}``.
    """

    filter: str
    sensor_template: str
    format: PayloadFormat
    value_path: tuple[str, ...]
    timestamp_path: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class MqttSourceConfig:
    """One MQTT broker connection and its topic rules."""

    name: str
    host: str
    port: int
    client_id: str
    topics: tuple[TopicRule, ...]
    username: str | None
    password: str | None
    tls: TlsConfig | None
    session_expiry_s: int
    keepalive_s: int
    password_sealed: Path | None  # a sealed password_file, opened at start (gateway.sealed)


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Monitoring parameters of an OPC-UA node."""

    sampling_ms: float
    queue_size: int
    deadband: DeadbandType
    deadband_value: float


@dataclass(frozen=True, slots=True)
class OpcuaNode:
    """An explicitly configured OPC-UA node and the sensor it feeds."""

    node_id: str
    sensor: str
    options: NodeOptions


@dataclass(frozen=True, slots=True)
class OpcuaBrowse:
    """A folder whose variable children are subscribed; ids from a template on BrowseName."""

    folder: str
    sensor_template: str
    options: NodeOptions


@dataclass(frozen=True, slots=True)
class OpcuaSecurity:
    """OPC-UA security: policy, mode, the gateway's certificate and key, server trust.

    ``application_uri`` defaults to the URI in the certificate's SubjectAltName;
    ``server_certificate`` is an explicit trust list of one; without it and with
    ``pin_server`` the server certificate is pinned at first use
    (:mod:`gateway.sources.opcua_trust`). A ``private_key`` ending in
    ``.sealed`` was imported with ``tecc-gateway import-secret`` and is
    decrypted in memory at start (:mod:`gateway.sealed`).
    """

    policy: SecurityPolicy
    mode: SecurityMode
    certificate: Path | None
    private_key: Path | None
    server_certificate: Path | None
    application_uri: str | None
    pin_server: bool


@dataclass(frozen=True, slots=True)
class OpcuaSourceConfig:
    """One OPC-UA server connection."""

    name: str
    url: str
    nodes: tuple[OpcuaNode, ...]
    browse: tuple[OpcuaBrowse, ...]
    security: OpcuaSecurity
    publishing_ms: float
    subscribe_batch: int
    reconnect_min_s: float
    reconnect_max_s: float


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """When a batch is cut: ``max_readings`` or ``max_delay_s``, whichever first."""

    max_readings: int
    max_delay_s: float
    max_pending: int


@dataclass(frozen=True, slots=True)
class ProgressConfig:
    """Progress notices: how the gateway tells each cluster a window is complete.

    The gateway declares to each cluster every ``interval_s`` that it has
    delivered every reading older than ``now - slack_s`` (and older than
    anything still buffered or spooled for that cluster). ``slack_s`` must
    cover the transit delay and clock skew between sensors and gateway: a
    reading arriving later than that is *late* (counted, never analysed).
    After an MQTT source (re)connects, the notices stay at the time it went
    down (at start: at the previous declaration) for ``settle_s`` while the
    broker redelivers what it held, and at most ``max_hold_s`` in all.
    ``ordered_sensors``: each sensor's readings arrive in timestamp order, so a
    sensor's bound is its newest timestamp when that is later than the slack
    (turn it off for sensors fed by several publishers or resent out of order).
    ``max_future_skew_s``: a reading stamped further than this after the
    gateway's clock is rejected (``future_timestamp``) and never moves the
    declared progress.
    """

    slack_s: float
    interval_s: float
    settle_s: float
    max_hold_s: float
    ordered_sensors: bool
    backfill_sensors: tuple[str, ...]
    backfill_idle_s: float
    max_future_skew_s: float


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where the spool lives and how large it may grow (sum of frame bytes)."""

    path: Path
    max_bytes: int


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A TECC compute cluster: its party index, ingest URL(s) and expected identity.

    ``url`` is the first ingest endpoint; ``urls`` all of them in configured
    order when the file gave a list (empty: ``url`` is the only one).
    """

    index: int
    url: str
    service_id: str
    role: str
    #: HTTPS with the attested key pinned (False: plain HTTP, explicitly configured).
    tls: bool = True
    #: Also verify the certificate chain and host name against this CA.
    tls_ca_file: Path | None = None
    #: Every ingest endpoint of this cluster (``urls:``); empty: just ``url``.
    urls: tuple[str, ...] = ()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The ingest base URLs, in configured order (at least one)."""
        return self.urls or (self.url,)


@dataclass(frozen=True, slots=True)
class AttestationConfig:
    """Allow-list for cluster quotes: platform keys and allowed measurements."""

    platform_keys: Mapping[str, bytes]  # key id -> raw Ed25519 public key
    allowed_measurements: frozenset[bytes]
    max_age_s: float


@dataclass(frozen=True, slots=True)
class TpmConfig:
    """How to reach the TPM and which PCRs the sealed keys are bound to.

    ``measure_pcr``: the PCR the launcher (:mod:`gateway.launch`) extends with
    the code bundle and the config before the keys are unsealed; one of
    ``pcrs`` (None: no launch measurement). ``owner_auth_file``: a file holding
    the owner hierarchy's authorisation value, when the TPM's owner auth is set.
    """

    tcti: str
    pcrs: tuple[int, ...]
    pcr_bank: str
    measure_pcr: int | None
    owner_auth_file: Path | None
    enrol: bool = False  # enrol by TPM attestation and re-quote (gateway/enrol.py)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Listen address of ``/healthz`` and ``/metrics``."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole agent configuration."""

    gateway_id: str
    state_dir: Path
    sensors: Mapping[str, SensorConfig]
    clusters: tuple[ClusterConfig, ...]
    attestation: AttestationConfig
    spool: SpoolConfig
    mqtt: tuple[MqttSourceConfig, ...]
    opcua: tuple[OpcuaSourceConfig, ...]
    modbus: tuple[ModbusSourceConfig, ...]
    batching: BatchingConfig
    progress: ProgressConfig
    tpm: TpmConfig
    http: HttpConfig
    kem_suite: str
    columns: tuple[str, ...]
    #: |x| < 2^value_bound_bits: the analytics policy's promise (its value_bound_bits)
    value_bound_bits: int | None

    def scales(self) -> dict[str, Scale]:
        """Per sensor the scale its readings are shared in (the envelope header carries it)."""
        return {s.id: s.scale(self.value_bound_bits) for s in self.sensors.values()}

    def beyond_value_bound(self) -> list[str]:
        """Sensors whose declared range reaches past what their scale holds (rejected there)."""
        bits = self.value_bound_bits
        if bits is None:
            return []
        out = []
        for s in self.sensors.values():
            low, high = s.scale(bits).inner(bits)
            if s.range.low < low or s.range.high > high:
                out.append(s.id)
        return out
