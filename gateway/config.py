"""Validated, frozen configuration of the gateway agent, loaded from YAML.

Every section is a frozen dataclass that checks itself in ``__post_init__``;
a bad value raises :class:`~gateway.errors.ConfigError` naming it. See
``configs/gateway.yaml`` for an annotated example and
:mod:`gateway.config_yaml` for loading.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from tecc_contract.fixedpoint import SensorRange


class PayloadFormat(enum.StrEnum):
    """How an MQTT payload carries its reading(s)."""

    NUMBER = "number"  # the payload is the decimal text of one number
    JSON = "json"  # a JSON object; value (and optional timestamp) at configured paths
    JSON_BATCH = "json_batch"  # a JSON array of such objects (or of plain numbers)
    AUTO = "auto"  # per payload: '[' -> json_batch, '{' -> json, otherwise number


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


#: |v| bound for sharing x² with 16 fraction bits: (2^23)² · 2^16 = 2^62.
MAX_SQUARE_ABS = float(2**23)


@dataclass(frozen=True, slots=True)
class SensorConfig:
    """A declared sensor: id, physical range and unit."""

    id: str
    range: SensorRange
    unit: str = ""

    def __post_init__(self) -> None:
        if not self.id or len(self.id) > 200:
            raise ConfigError(f"sensor id must be 1..200 characters, got {self.id!r}")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS material for an MQTT connection (paths to PEM files)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


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
    format: PayloadFormat = PayloadFormat.NUMBER
    value_path: tuple[str, ...] = ("value",)
    timestamp_path: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        levels = self.filter.split("/")
        if not self.filter or any(("+" in lv or "#" in lv) and len(lv) > 1 for lv in levels):
            raise ConfigError(f"invalid MQTT topic filter {self.filter!r}")
        if "#" in levels[:-1]:
            raise ConfigError(f"'#' must be the last level of topic filter {self.filter!r}")
        n = sum(lv in ("+", "#") for lv in levels)
        try:
            self.sensor_template.format(*(["x"] * n))
        except (IndexError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"sensor_template {self.sensor_template!r} does not fit filter "
                f"{self.filter!r} ({n} wildcard captures, use {{0}}..{{{n - 1}}})"
            ) from exc


@dataclass(frozen=True, slots=True)
class MqttSourceConfig:
    """One MQTT broker connection and its topic rules."""

    name: str
    host: str
    port: int
    client_id: str
    topics: tuple[TopicRule, ...]
    username: str | None = None
    password: str | None = None
    password_sealed: Path | None = None  # a sealed password_file, opened at start
    tls: TlsConfig | None = None
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt source {self.name!r}: port out of range")
        if not self.topics:
            raise ConfigError(f"mqtt source {self.name!r}: configure at least one topic rule")
        if not self.client_id:
            raise ConfigError(f"mqtt source {self.name!r}: a fixed client_id is required")


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Monitoring parameters of an OPC-UA node."""

    sampling_ms: float = 100.0
    queue_size: int = 10
    deadband: DeadbandType = DeadbandType.NONE
    deadband_value: float = 0.0

    def __post_init__(self) -> None:
        if self.sampling_ms < 0 or self.queue_size < 1:
            raise ConfigError("sampling_ms must be >= 0 and queue_size >= 1")
        if self.deadband is not DeadbandType.NONE and not (
            math.isfinite(self.deadband_value) and self.deadband_value >= 0
        ):
            raise ConfigError("deadband value must be a finite number >= 0")


@dataclass(frozen=True, slots=True)
class OpcuaNode:
    """An explicitly configured OPC-UA node and the sensor it feeds."""

    node_id: str
    sensor: str
    options: NodeOptions = NodeOptions()


@dataclass(frozen=True, slots=True)
class OpcuaBrowse:
    """A folder whose variable children are subscribed; ids from a template on BrowseName."""

    folder: str
    sensor_template: str = "{name}"
    options: NodeOptions = NodeOptions()


@dataclass(frozen=True, slots=True)
class OpcuaSecurity:
    """OPC-UA security: policy, mode, the gateway's certificate and key, server trust.

    ``application_uri`` defaults to the URI in the certificate's SubjectAltName;
    ``server_certificate`` is an explicit trust list of one; without it and with
    ``pin_server`` (default) the server certificate is pinned at first use
    (:mod:`gateway.sources.opcua_trust`). A ``private_key`` ending in
    ``.sealed`` was imported with ``tecc-gateway import-secret`` and is
    decrypted in memory at start (:mod:`gateway.sealed`).
    """

    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.SIGN_AND_ENCRYPT
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    application_uri: str | None = None
    pin_server: bool = True

    def __post_init__(self) -> None:
        if self.policy is not SecurityPolicy.NONE and (
            self.certificate is None or self.private_key is None
        ):
            raise ConfigError("OPC-UA Basic256Sha256 needs certificate and private_key paths")


@dataclass(frozen=True, slots=True)
class OpcuaSourceConfig:
    """One OPC-UA server connection."""

    name: str
    url: str
    nodes: tuple[OpcuaNode, ...] = ()
    browse: tuple[OpcuaBrowse, ...] = ()
    security: OpcuaSecurity = OpcuaSecurity()
    publishing_ms: float = 100.0
    subscribe_batch: int = 500
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.startswith("opc.tcp://"):
            raise ConfigError(f"opcua source {self.name!r}: url must start with opc.tcp://")
        if not self.nodes and not self.browse:
            raise ConfigError(f"opcua source {self.name!r}: configure nodes or browse folders")
        if self.subscribe_batch < 1:
            raise ConfigError("subscribe_batch must be >= 1")


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """When a batch is cut: ``max_readings`` or ``max_delay_s``, whichever first."""

    max_readings: int = 20_000
    max_delay_s: float = 0.25
    max_pending: int = 2_000_000  # readings held while cluster keys are unknown

    def __post_init__(self) -> None:
        if self.max_readings < 1 or self.max_delay_s <= 0 or self.max_pending < self.max_readings:
            raise ConfigError(
                "batching: need max_readings >= 1, max_delay_s > 0, max_pending >= max_readings"
            )


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

    slack_s: float = 1.0
    interval_s: float = 0.25
    settle_s: float = 2.0
    max_hold_s: float = 60.0
    ordered_sensors: bool = True
    max_future_skew_s: float = 5.0

    def __post_init__(self) -> None:
        vals = (self.slack_s, self.interval_s, self.settle_s, self.max_hold_s)
        if not all(math.isfinite(v) and v >= 0 for v in vals) or self.interval_s <= 0:
            raise ConfigError(
                "progress: need finite slack_s, settle_s, max_hold_s >= 0 and interval_s > 0"
            )
        if not (math.isfinite(self.max_future_skew_s) and 0 <= self.max_future_skew_s <= 3600):
            raise ConfigError(
                "progress.max_future_skew_s must be a number of seconds in 0..3600 "
                f"(how far ahead of the gateway clock a sensor may stamp), "
                f"got {self.max_future_skew_s}"
            )


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where the spool lives and how large it may grow (sum of frame bytes)."""

    path: Path
    max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.max_bytes < 1 << 16:
            raise ConfigError("spool.max_bytes must be at least 65536")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A TECC compute cluster: its party index, URL and expected identity."""

    index: int
    url: str
    service_id: str
    role: str = "party"

    def __post_init__(self) -> None:
        if self.index < 0 or not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"cluster {self.index}: need index >= 0 and an http(s) url")


@dataclass(frozen=True, slots=True)
class AttestationConfig:
    """Allow-list for cluster quotes: platform keys and allowed measurements."""

    platform_keys: Mapping[str, bytes]  # key id -> raw Ed25519 public key
    allowed_measurements: frozenset[bytes]
    max_age_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.platform_keys or not self.allowed_measurements:
            raise ConfigError("attestation: configure platform_keys and allowed_measurements")
        if any(len(k) != 32 for k in self.platform_keys.values()):
            raise ConfigError("attestation: platform keys are 32-byte Ed25519 keys in hex")


@dataclass(frozen=True, slots=True)
class TpmConfig:
    """How to reach the TPM and which PCRs the sealed keys are bound to.

    ``measure_pcr``: the PCR the launcher (:mod:`gateway.launch`) extends with
    the code bundle and the config before the keys are unsealed; it must be
    one of ``pcrs`` (None: no launch measurement, keys bound to ``pcrs`` as
    they are at provisioning). ``owner_auth_file``: a file holding the owner
    hierarchy's authorisation value, when the TPM's owner auth is set.
    """

    tcti: str = "swtpm:port=2321"
    pcrs: tuple[int, ...] = (7, 14)
    pcr_bank: str = "sha256"
    measure_pcr: int | None = 14
    owner_auth_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.pcrs or any(not 0 <= p < 24 for p in self.pcrs):
            raise ConfigError("tpm.pcrs must be a non-empty list of PCR indices 0..23")
        if self.measure_pcr is not None:
            if self.measure_pcr not in self.pcrs:
                raise ConfigError(
                    f"tpm.measure_pcr {self.measure_pcr} must be one of tpm.pcrs "
                    f"{list(self.pcrs)} (or null to bind the keys without a launch measurement)"
                )
            if self.pcr_bank != "sha256":
                raise ConfigError("tpm.measure_pcr needs tpm.pcr_bank: sha256")
            if not 8 <= self.measure_pcr <= 15:
                raise ConfigError(
                    "tpm.measure_pcr must be a resettable, software-owned PCR in 8..15 "
                    f"(14 by default), got {self.measure_pcr}"
                )


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Listen address of ``/healthz`` and ``/metrics``."""

    host: str = "127.0.0.1"
    port: int = 9100


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole agent configuration."""

    gateway_id: str
    state_dir: Path
    sensors: Mapping[str, SensorConfig]
    clusters: tuple[ClusterConfig, ...]
    attestation: AttestationConfig
    spool: SpoolConfig
    mqtt: tuple[MqttSourceConfig, ...] = ()
    opcua: tuple[OpcuaSourceConfig, ...] = ()
    batching: BatchingConfig = BatchingConfig()
    progress: ProgressConfig = ProgressConfig()
    tpm: TpmConfig = TpmConfig()
    http: HttpConfig = HttpConfig()
    kem_suite: str = "x25519"
    columns: tuple[str, ...] = ("value",)
    #: |x| < 2^value_bound_bits: the analytics policy's promise (its value_bound_bits)
    value_bound_bits: int | None = 12

    def __post_init__(self) -> None:
        if not self.gateway_id:
            raise ConfigError("gateway_id is required")
        idx = sorted(c.index for c in self.clusters)
        if len(idx) < 2 or idx != list(range(len(idx))):
            raise ConfigError(f"clusters need indices 0..N-1 with N >= 2, got {idx}")
        if not self.sensors:
            raise ConfigError("declare at least one sensor")
        undeclared = {n.sensor for s in self.opcua for n in s.nodes} - set(self.sensors)
        if undeclared:
            raise ConfigError(f"OPC-UA nodes feed undeclared sensors {sorted(undeclared)}")
        unknown = set(self.columns) - {"value", "square"}
        if unknown or "value" not in self.columns:
            raise ConfigError(
                f"envelope.columns must include value and may add square, got {list(self.columns)}"
            )
        self._check_value_bound()
        if "square" in self.columns:
            too_wide = [
                s.id
                for s in self.sensors.values()
                if max(abs(s.range.low), abs(s.range.high)) >= MAX_SQUARE_ABS
            ]
            if too_wide:
                raise ConfigError(
                    f"sensors {too_wide} reach |v| >= 2^23, so x² overflows the ring at 16 "
                    "fraction bits; rescale their unit or drop the square column"
                )

    def _check_value_bound(self) -> None:
        """A sensor whose whole declared range lies beyond the bound can never report."""
        bits = self.value_bound_bits
        if bits is None:
            return
        if not 1 <= bits <= 30:
            raise ConfigError(
                f"envelope.value_bound_bits must be in 1..30 (the analytics policy's "
                f"value_bound_bits) or null, got {bits}"
            )
        bound = float(2**bits)
        outside = [
            s.id for s in self.sensors.values() if s.range.low >= bound or s.range.high <= -bound
        ]
        if outside:
            raise ConfigError(
                f"sensors {outside} declare ranges entirely beyond ±2^{bits} "
                "(envelope.value_bound_bits, which must equal the analytics policy's "
                "value_bound_bits): the clusters' secure comparisons would wrap every "
                "reading; rescale the sensor's unit so its range fits"
            )

    def beyond_value_bound(self) -> list[str]:
        """Sensors whose declared range reaches past the value bound (readings there rejected)."""
        if self.value_bound_bits is None:
            return []
        bound = float(2**self.value_bound_bits)
        return [s.id for s in self.sensors.values() if max(-s.range.low, s.range.high) >= bound]
