"""Service configuration: frozen, validated dataclasses loaded from YAML.

Relative paths in a config file are resolved against the file's directory.
Attestation trust can name concrete values or ``self``: ``platform_keys:
[self]`` trusts the local simulated platform, ``allowed_measurements: [self]``
trusts exactly this service's own build and policy (the usual deployment:
every service runs the same approved bundle).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.errors import ConfigError
from cloud_tecc.output.incidents import Debounce, IncidentError, Rules
from tecc_contract.keys import KemSuite

SELF = "self"


class Role(enum.StrEnum):
    """Which service a config describes."""

    PARTY = "party"
    DEALER = "dealer"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Another service: its attested id, base URL and (for MPC links) ``host:port``."""

    service_id: str
    url: str
    mpc: str = ""

    @property
    def mpc_address(self) -> tuple[str, int]:
        """The MPC/dealer socket address as (host, port)."""
        host, _, port = self.mpc.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"endpoint {self.service_id!r} needs mpc: 'host:port'")
        return host, int(port)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint {self.service_id!r}: url must start with http(s)://")


@dataclass(frozen=True, slots=True)
class Trust:
    """Attestation trust anchors: platform keys and allowed measurements (hex or ``self``)."""

    platform_keys: tuple[str, ...] = (SELF,)
    allowed_measurements: tuple[str, ...] = (SELF,)
    max_age_s: float = 300.0
    refresh_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Settings shared by every service."""

    role: Role
    service_id: str
    host: str
    port: int
    state_dir: Path
    platform_dir: Path
    policy_path: Path
    policy: AnalyticsPolicy
    trust: Trust = field(default_factory=Trust)
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class PartyConfig:
    """A cluster party: ingest, MPC peer and result sender."""

    service: ServiceConfig
    party: int
    n_parties: int
    suite: KemSuite
    gateways: Mapping[str, str]
    peers: Mapping[int, Endpoint]
    dealer: Endpoint
    output: Endpoint
    mpc_listen: str = "127.0.0.1:0"
    synchronous: str = "FULL"
    tick_s: float = 0.2
    retention_s: float = 86_400.0
    active_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.party < self.n_parties or self.n_parties != 2:
            raise ConfigError("this release supports exactly 2 parties with party in {0, 1}")
        if set(self.peers) != set(range(self.n_parties)) - {self.party}:
            raise ConfigError("peers must list every other party index exactly once")
        if self.synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigError("synchronous must be FULL, NORMAL or EXTRA")


@dataclass(frozen=True, slots=True)
class DealerConfig:
    """The dealer of correlated randomness."""

    service: ServiceConfig
    parties: Mapping[int, Endpoint]
    mpc_listen: str = "127.0.0.1:0"
    batch_readings: int = 20_000
    depth: int = 4


@dataclass(frozen=True, slots=True)
class IncidentConfig:
    """``incidents:`` of the output config: debounce per detector, retention, storage caps."""

    rules: Rules = field(default_factory=Rules)
    retention_s: float = 7 * 86_400.0
    max_flags_per_incident: int = 1_000
    max_flag_rows: int = 1_000_000

    def __post_init__(self) -> None:
        if not 60 <= self.retention_s <= 10 * 365 * 86_400:
            raise ConfigError("incidents.retention_s must be 60 s .. 10 years")
        if not 1 <= self.max_flags_per_incident <= self.max_flag_rows <= 100_000_000:
            raise ConfigError("incidents: need 1 <= max_flags_per_incident <= max_flag_rows <= 1e8")


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """``auth.oidc:`` sign-in with an OpenID Connect issuer (code + PKCE) and bearer JWTs."""

    issuer: str
    client_id: str
    client_secret: str = ""
    audience: str = ""  # of API bearer tokens; default: client_id
    role_claim: str = "tecc_role"
    redirect_url: str = ""  # default: https://<host>/auth/oidc/callback of the request


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``auth:`` of the output config: who may read, and over what transport."""

    allowed_hosts: tuple[str, ...] = ()  # Host values besides the listener's own names
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ops_host: str = ""  # /metrics and /healthz on their own listener when ops_port is set
    ops_port: int = 0
    intake_host: str = ""  # /attestation and /v1/results on a plain listener of their own
    intake_port: int = 0
    session_ttl_s: float = 12 * 3600.0
    oidc: OidcConfig | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("auth.tls needs both cert and key (paths to PEM files)")
        if not 60 <= self.session_ttl_s <= 30 * 86_400:
            raise ConfigError("auth.session_ttl_s must be 60 s .. 30 days")


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """The output service: reconstruction, storage and JSON API."""

    service: ServiceConfig
    parties: Mapping[int, Endpoint]
    gateways: Mapping[str, str] = field(default_factory=dict)  # gateway id → health URL
    incidents: IncidentConfig = field(default_factory=IncidentConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    units: Mapping[str, str] = field(default_factory=dict)  # sensor (glob) → unit for the axes


def _endpoint(raw: Any, what: str) -> Endpoint:
    if not isinstance(raw, Mapping) or "url" not in raw or "service_id" not in raw:
        raise ConfigError(f"{what} must be a mapping with service_id and url")
    return Endpoint(str(raw["service_id"]), str(raw["url"]).rstrip("/"), str(raw.get("mpc", "")))


def _endpoints(raw: Any, what: str) -> dict[int, Endpoint]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{what} must map party index to {{service_id, url}}")
    return {int(k): _endpoint(v, f"{what}.{k}") for k, v in raw.items()}


def _service(raw: Mapping[str, Any], base: Path, role: Role) -> ServiceConfig:
    try:
        policy_path = (base / str(raw.get("policy", "policy.yaml"))).resolve()
        policy = policy_from_mapping(yaml.safe_load(policy_path.read_text()) or {})
        listen = raw.get("listen") or {}
        trust_raw = raw.get("attestation") or {}
        trust = Trust(
            platform_keys=tuple(str(k) for k in trust_raw.get("platform_keys", [SELF])),
            allowed_measurements=tuple(
                str(m) for m in trust_raw.get("allowed_measurements", [SELF])
            ),
            max_age_s=float(trust_raw.get("max_age_s", 300.0)),
            refresh_s=float(trust_raw.get("refresh_s", 30.0)),
        )
        return ServiceConfig(
            role=role,
            service_id=str(raw["service_id"]),
            host=str(listen.get("host", "127.0.0.1")),
            port=int(listen.get("port", 0)),
            state_dir=(base / str(raw["state_dir"])).resolve(),
            platform_dir=(base / str(raw.get("platform_dir", "platform"))).resolve(),
            policy_path=policy_path,
            policy=policy,
            trust=trust,
            log_level=str(raw.get("log_level", "INFO")),
        )
    except KeyError as exc:
        raise ConfigError(f"config is missing the key {exc.args[0]!r}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the analytics policy: {exc}") from exc
    except (TypeError, AttributeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{role} config or its policy has a malformed value: {exc}") from exc


def load_raw(path: Path) -> tuple[dict[str, Any], Role]:
    """Read a YAML config and its ``role``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping")
    try:
        return raw, Role(raw.get("role", ""))
    except ValueError as exc:
        raise ConfigError(f"config {path}: role must be one of {[r.value for r in Role]}") from exc


def load_party(path: Path) -> PartyConfig:
    """Load a party config."""
    raw, _ = load_raw(path)
    base = path.parent
    try:
        return PartyConfig(
            service=_service(raw, base, Role.PARTY),
            party=int(raw["party"]),
            n_parties=int(raw.get("n_parties", 2)),
            suite=KemSuite(raw.get("suite", "x25519")),
            gateways={str(k): str(v) for k, v in (raw.get("gateways") or {}).items()},
            peers=_endpoints(raw.get("peers"), "peers"),
            dealer=_endpoint(raw.get("dealer"), "dealer"),
            output=_endpoint(raw.get("output"), "output"),
            mpc_listen=str(raw.get("mpc_listen", "127.0.0.1:0")),
            synchronous=str(raw.get("synchronous", "FULL")),
            tick_s=float(raw.get("tick_s", 0.2)),
            retention_s=float(raw.get("retention_s", 86_400.0)),
            active_s=float(raw.get("active_s", 60.0)),
        )
    except KeyError as exc:
        raise ConfigError(f"party config is missing the key {exc.args[0]!r}") from exc
    except (TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"party config has a malformed value: {exc}") from exc


def load_dealer(path: Path) -> DealerConfig:
    """Load a dealer config."""
    raw, _ = load_raw(path)
    try:
        return DealerConfig(
            _service(raw, path.parent, Role.DEALER),
            _endpoints(raw.get("parties"), "parties"),
            mpc_listen=str(raw.get("mpc_listen", "127.0.0.1:0")),
            batch_readings=int(raw.get("batch_readings", 20_000)),
            depth=int(raw.get("depth", 4)),
        )
    except (TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"dealer config has a malformed value: {exc}") from exc


def _debounce(raw: Any, what: str) -> Debounce:
    if not isinstance(raw, Mapping) or set(raw) - {"open_after", "within_s", "quiet_s"}:
        raise ConfigError(f"{what} takes open_after, within_s and quiet_s")
    try:
        return Debounce(
            int(raw.get("open_after", 1)),
            float(raw.get("within_s", 60.0)),
            float(raw.get("quiet_s", 30.0)),
        )
    except IncidentError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def _incidents(raw: Any) -> IncidentConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("incidents must be a mapping")
    dets = raw.get("detectors") or {}
    if not isinstance(dets, Mapping):
        raise ConfigError("incidents.detectors must map a detector name to its debounce")
    rules = Rules(
        _debounce(raw.get("default") or {}, "incidents.default"),
        {str(k): _debounce(v, f"incidents.detectors.{k}") for k, v in dets.items()},
    )
    return IncidentConfig(
        rules,
        float(raw.get("retention_s", 7 * 86_400.0)),
        int(raw.get("max_flags_per_incident", 1_000)),
        int(raw.get("max_flag_rows", 1_000_000)),
    )


def _auth(raw: Any, base: Path) -> AuthConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("auth must be a mapping")
    tls = raw.get("tls") or {}
    ops = raw.get("ops_listen") or {}
    intake = raw.get("intake_listen") or {}
    oidc_raw = raw.get("oidc")
    oidc = None
    if oidc_raw is not None:
        if not isinstance(oidc_raw, Mapping) or "issuer" not in oidc_raw:
            raise ConfigError("auth.oidc needs issuer and client_id")
        oidc = OidcConfig(
            issuer=str(oidc_raw["issuer"]).rstrip("/"),
            client_id=str(oidc_raw["client_id"]),
            client_secret=str(oidc_raw.get("client_secret", "")),
            audience=str(oidc_raw.get("audience", "")),
            role_claim=str(oidc_raw.get("role_claim", "tecc_role")),
            redirect_url=str(oidc_raw.get("redirect_url", "")),
        )
    return AuthConfig(
        allowed_hosts=tuple(str(h) for h in raw.get("allowed_hosts", ())),
        tls_cert=(base / str(tls["cert"])).resolve() if "cert" in tls else None,
        tls_key=(base / str(tls["key"])).resolve() if "key" in tls else None,
        ops_host=str(ops.get("host", "127.0.0.1")) if ops else "",
        ops_port=int(ops.get("port", 0)) if ops else 0,
        intake_host=str(intake.get("host", "127.0.0.1")) if intake else "",
        intake_port=int(intake.get("port", 0)) if intake else 0,
        session_ttl_s=float(raw.get("session_ttl_s", 12 * 3600.0)),
        oidc=oidc,
    )


def load_output(path: Path) -> OutputConfig:
    """Load an output-service config."""
    raw, _ = load_raw(path)
    gateways = raw.get("gateways") or {}
    if not isinstance(gateways, Mapping):
        raise ConfigError("gateways must map a gateway id to its health URL")
    try:
        return OutputConfig(
            _service(raw, path.parent, Role.OUTPUT),
            _endpoints(raw.get("parties"), "parties"),
            {str(k): str(v) for k, v in gateways.items()},
            _incidents(raw.get("incidents") or {}),
            _auth(raw.get("auth") or {}, path.parent),
            {str(k): str(v) for k, v in (raw.get("units") or {}).items()},
        )
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        raise ConfigError(f"output config has a malformed value: {exc}") from exc


def parse_hostport(value: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; ConfigError otherwise."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"expected 'host:port', got {value!r}")
    return host, int(port)
