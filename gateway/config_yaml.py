"""Load a :class:`~gateway.config.GatewayConfig` from YAML.

Unknown keys are errors (a typo must not silently disable a setting). Relative
paths resolve against the config file's folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.config import (
    AttestationConfig,
    BatchingConfig,
    ClusterConfig,
    DeadbandType,
    GatewayConfig,
    HttpConfig,
    MqttSourceConfig,
    NodeOptions,
    OpcuaBrowse,
    OpcuaNode,
    OpcuaSecurity,
    OpcuaSourceConfig,
    PayloadFormat,
    ProgressConfig,
    SecurityMode,
    SecurityPolicy,
    SensorConfig,
    SpoolConfig,
    TlsConfig,
    TopicRule,
    TpmConfig,
)
from gateway.errors import ConfigError
from tecc_contract.errors import ContractError
from tecc_contract.fixedpoint import SensorRange

T = TypeVar("T")
Obj = Mapping[str, Any]


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate a gateway YAML file or raise :class:`ConfigError`."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {p} (a UTF-8 YAML file is expected): {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from exc
    try:
        return parse_config(raw, base=p.parent.resolve())
    except (ContractError, ValueError, TypeError) as exc:
        raise ConfigError(f"config {p}: {exc}") from exc


def _obj(raw: object, where: str, allowed: set[str]) -> Obj:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
    return raw


def _list(raw: object, where: str, item: Callable[[object, str], T]) -> tuple[T, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list")
    return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(raw))


def _path(base: Path, raw: object) -> Path | None:
    if raw is None:
        return None
    p = Path(str(raw))
    return p if p.is_absolute() else base / p


def _req(o: Obj, key: str, where: str) -> Any:
    if key not in o:
        raise ConfigError(f"{where}: missing required key {key!r}")
    return o[key]


def _sensor(raw: object, where: str) -> SensorConfig:
    o = _obj(raw, where, {"id", "range", "unit"})
    rng = _req(o, "range", where)
    if not isinstance(rng, list) or len(rng) != 2:
        raise ConfigError(f"{where}.range must be [low, high]")
    return SensorConfig(
        id=str(_req(o, "id", where)),
        range=SensorRange(float(rng[0]), float(rng[1])),
        unit=str(o.get("unit", "")),
    )


def _bool(raw: object, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where} must be true or false, got {raw!r}")
    return raw


def _dotted(raw: object) -> tuple[str, ...]:
    return tuple(str(raw).split("."))


def _topic(raw: object, where: str) -> TopicRule:
    o = _obj(raw, where, {"filter", "sensor_template", "format", "value_path", "timestamp_path"})
    ts = o.get("timestamp_path")
    return TopicRule(
        filter=str(_req(o, "filter", where)),
        sensor_template=str(_req(o, "sensor_template", where)),
        format=PayloadFormat(o.get("format", "number")),
        value_path=_dotted(o.get("value_path", "value")),
        timestamp_path=None if ts is None else _dotted(ts),
    )


def _mqtt(base: Path) -> Callable[[object, str], MqttSourceConfig]:
    def parse(raw: object, where: str) -> MqttSourceConfig:
        keys = {
            "name",
            "host",
            "port",
            "client_id",
            "topics",
            "username",
            "password",
            "password_file",
            "tls",
            "session_expiry_s",
            "keepalive_s",
        }
        o = _obj(raw, where, keys)
        tls = None
        if o.get("tls") is not None:
            t = _obj(o["tls"], f"{where}.tls", {"ca_file", "cert_file", "key_file"})
            ca = _path(base, _req(t, "ca_file", f"{where}.tls"))
            assert ca is not None
            tls = TlsConfig(ca, _path(base, t.get("cert_file")), _path(base, t.get("key_file")))
        password = o.get("password")
        sealed = None
        pf = _path(base, o.get("password_file"))
        if pf is not None and pf.name.endswith(".sealed"):
            sealed = pf  # opened with the spool key when the agent starts (gateway.sealed)
        elif pf is not None:
            try:
                password = pf.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"{where}.password_file {pf} cannot be read ({exc}); fix the path"
                ) from exc
        return MqttSourceConfig(
            name=str(o.get("name", "mqtt")),
            host=str(o.get("host", "127.0.0.1")),
            port=int(o.get("port", 1883)),
            client_id=str(_req(o, "client_id", where)),
            topics=_list(_req(o, "topics", where), f"{where}.topics", _topic),
            username=None if o.get("username") is None else str(o["username"]),
            password=None if password is None else str(password),
            password_sealed=sealed,
            tls=tls,
            session_expiry_s=int(o.get("session_expiry_s", 7 * 24 * 3600)),
            keepalive_s=int(o.get("keepalive_s", 30)),
        )

    return parse


def _options(o: Obj) -> NodeOptions:
    db = o.get("deadband")
    kind, value = DeadbandType.NONE, 0.0
    if db is not None:
        d = _obj(db, "deadband", {"type", "value"})
        kind, value = DeadbandType(d.get("type", "absolute")), float(d.get("value", 0.0))
    return NodeOptions(
        sampling_ms=float(o.get("sampling_ms", 100.0)),
        queue_size=int(o.get("queue_size", 10)),
        deadband=kind,
        deadband_value=value,
    )


_NODE_OPTS = {"sampling_ms", "queue_size", "deadband"}


def _node(raw: object, where: str) -> OpcuaNode:
    o = _obj(raw, where, {"node_id", "sensor"} | _NODE_OPTS)
    return OpcuaNode(str(_req(o, "node_id", where)), str(_req(o, "sensor", where)), _options(o))


def _browse(raw: object, where: str) -> OpcuaBrowse:
    o = _obj(raw, where, {"folder", "sensor_template"} | _NODE_OPTS)
    return OpcuaBrowse(
        str(_req(o, "folder", where)), str(o.get("sensor_template", "{name}")), _options(o)
    )


def _opcua(base: Path) -> Callable[[object, str], OpcuaSourceConfig]:
    def parse(raw: object, where: str) -> OpcuaSourceConfig:
        keys = {
            "name",
            "url",
            "nodes",
            "browse",
            "security",
            "publishing_ms",
            "subscribe_batch",
            "reconnect_min_s",
            "reconnect_max_s",
        }
        o = _obj(raw, where, keys)
        sec = OpcuaSecurity()
        if o.get("security") is not None:
            s = _obj(
                o["security"],
                f"{where}.security",
                {
                    "policy",
                    "mode",
                    "certificate",
                    "private_key",
                    "server_certificate",
                    "application_uri",
                    "pin_server",
                },
            )
            uri = s.get("application_uri")
            sec = OpcuaSecurity(
                policy=SecurityPolicy(s.get("policy", "None")),
                mode=SecurityMode(s.get("mode", "SignAndEncrypt")),
                certificate=_path(base, s.get("certificate")),
                private_key=_path(base, s.get("private_key")),
                server_certificate=_path(base, s.get("server_certificate")),
                application_uri=None if uri is None else str(uri),
                pin_server=_bool(s.get("pin_server", True), f"{where}.security.pin_server"),
            )
        return OpcuaSourceConfig(
            name=str(o.get("name", "opcua")),
            url=str(_req(o, "url", where)),
            nodes=_list(o.get("nodes"), f"{where}.nodes", _node),
            browse=_list(o.get("browse"), f"{where}.browse", _browse),
            security=sec,
            publishing_ms=float(o.get("publishing_ms", 100.0)),
            subscribe_batch=int(o.get("subscribe_batch", 500)),
            reconnect_min_s=float(o.get("reconnect_min_s", 0.5)),
            reconnect_max_s=float(o.get("reconnect_max_s", 30.0)),
        )

    return parse


def _cluster(raw: object, where: str) -> ClusterConfig:
    o = _obj(raw, where, {"index", "url", "service_id", "role"})
    return ClusterConfig(
        index=int(_req(o, "index", where)),
        url=str(_req(o, "url", where)).rstrip("/"),
        service_id=str(_req(o, "service_id", where)),
        role=str(o.get("role", "party")),
    )


def _attestation(raw: object) -> AttestationConfig:
    o = _obj(raw, "attestation", {"platform_keys", "allowed_measurements", "max_age_s"})
    keys = _obj(
        _req(o, "platform_keys", "attestation"),
        "attestation.platform_keys",
        set(o.get("platform_keys") or {}),
    )
    meas = _req(o, "allowed_measurements", "attestation")
    if not isinstance(meas, list):
        raise ConfigError("attestation.allowed_measurements must be a list of hex digests")
    return AttestationConfig(
        platform_keys={str(k): bytes.fromhex(str(v)) for k, v in keys.items()},
        allowed_measurements=frozenset(bytes.fromhex(str(m)) for m in meas),
        max_age_s=float(o.get("max_age_s", 300.0)),
    )


_TOP = {
    "gateway_id",
    "state_dir",
    "sensors",
    "sources",
    "batching",
    "progress",
    "spool",
    "clusters",
    "attestation",
    "tpm",
    "http",
    "envelope",
}


def parse_config(raw: object, *, base: Path) -> GatewayConfig:
    """Build a :class:`GatewayConfig` from a parsed YAML document."""
    o = _obj(raw, "config", _TOP)
    state_dir = _path(base, o.get("state_dir", "var/gateway"))
    if state_dir is None:
        raise ConfigError("state_dir must be a directory path (or left out for var/gateway)")
    sensors = _list(_req(o, "sensors", "config"), "sensors", _sensor)
    by_id = {s.id: s for s in sensors}
    if len(by_id) != len(sensors):
        raise ConfigError("sensor ids must be unique")
    src = _obj(o.get("sources") or {}, "sources", {"mqtt", "opcua"})
    b = _obj(o.get("batching") or {}, "batching", {"max_readings", "max_delay_s", "max_pending"})
    pr = _obj(
        o.get("progress") or {},
        "progress",
        {"slack_s", "interval_s", "settle_s", "max_hold_s", "ordered_sensors", "max_future_skew_s"},
    )
    sp = _obj(o.get("spool") or {}, "spool", {"path", "max_bytes"})
    spool_path = _path(base, sp.get("path")) or state_dir / "spool.db"
    t = _obj(
        o.get("tpm") or {}, "tpm", {"tcti", "pcrs", "pcr_bank", "measure_pcr", "owner_auth_file"}
    )
    h = _obj(o.get("http") or {}, "http", {"host", "port"})
    env = _obj(o.get("envelope") or {}, "envelope", {"suite", "columns", "value_bound_bits"})
    vbits = env.get("value_bound_bits", 12)
    return GatewayConfig(
        gateway_id=str(_req(o, "gateway_id", "config")),
        state_dir=state_dir,
        sensors=by_id,
        clusters=tuple(
            sorted(
                _list(_req(o, "clusters", "config"), "clusters", _cluster), key=lambda c: c.index
            )
        ),
        attestation=_attestation(_req(o, "attestation", "config")),
        spool=SpoolConfig(spool_path, int(sp.get("max_bytes", 1 << 30))),
        mqtt=_list(src.get("mqtt"), "sources.mqtt", _mqtt(base)),
        opcua=_list(src.get("opcua"), "sources.opcua", _opcua(base)),
        batching=BatchingConfig(
            max_readings=int(b.get("max_readings", 20_000)),
            max_delay_s=float(b.get("max_delay_s", 0.25)),
            max_pending=int(b.get("max_pending", 2_000_000)),
        ),
        progress=ProgressConfig(
            slack_s=float(pr.get("slack_s", 1.0)),
            interval_s=float(pr.get("interval_s", 0.25)),
            settle_s=float(pr.get("settle_s", 2.0)),
            max_hold_s=float(pr.get("max_hold_s", 60.0)),
            ordered_sensors=_bool(pr.get("ordered_sensors", True), "progress.ordered_sensors"),
            max_future_skew_s=float(pr.get("max_future_skew_s", 5.0)),
        ),
        tpm=TpmConfig(
            tcti=str(t.get("tcti", "swtpm:port=2321")),
            pcrs=tuple(int(x) for x in t.get("pcrs", [7, 14])),
            pcr_bank=str(t.get("pcr_bank", "sha256")),
            measure_pcr=None if t.get("measure_pcr", 14) is None else int(t.get("measure_pcr", 14)),
            owner_auth_file=_path(base, t.get("owner_auth_file")),
        ),
        http=HttpConfig(str(h.get("host", "127.0.0.1")), int(h.get("port", 9100))),
        kem_suite=str(env.get("suite", "x25519")),
        columns=tuple(str(c) for c in env.get("columns", ["value"])),
        value_bound_bits=None if vbits is None else int(vbits),
    )
