"""Load a :class:`~gateway.config.GatewayConfig`: YAML -> :class:`GatewayFile` -> runtime.

The file is validated once against :mod:`gateway.schema` (strict: unknown
keys, ``port: true`` or ``port: "80"`` are errors naming their path) and then
converted in one step. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import ssl
from pathlib import Path

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
    ProgressConfig,
    SensorConfig,
    SpoolConfig,
    TlsConfig,
    TopicRule,
    TpmConfig,
)
from gateway.errors import GatewayConfigError
from gateway.init.writer import check_placeholders
from gateway.schema import BrowseDoc, GatewayFile, MqttDoc, NodeDoc, OpcuaDoc
from tecc_contract.errors import ConfigFileError
from tecc_contract.fixedpoint import SensorRange
from tecc_contract.schema import convert, read_document


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate a gateway YAML file or raise :class:`GatewayConfigError`."""
    p = Path(path)
    try:
        raw = read_document(p)
    except ConfigFileError as exc:
        raise GatewayConfigError(str(exc)) from exc
    return parse_config(raw, base=p.parent.resolve(), source=str(p))


def parse_file(raw: object, *, source: str = "config") -> GatewayFile:
    """Validate a parsed YAML document against the schema."""
    return convert(raw, GatewayFile, source=source, error=GatewayConfigError)


def parse_config(raw: object, *, base: Path, source: str = "config") -> GatewayConfig:
    """Build a :class:`GatewayConfig` from a parsed YAML document.

    A file still holding the placeholders ``tecc-gateway init`` writes for unknown
    clusters is refused, naming each key (:func:`gateway.init.writer.check_placeholders`).
    """
    doc = parse_file(raw, source=source)
    check_placeholders(doc, source)
    return to_runtime(doc, base=base, source=source)


def _path(base: Path, raw: str | None) -> Path | None:
    if raw is None:
        return None
    p = Path(raw)
    return p if p.is_absolute() else base / p


def _password(doc: MqttDoc, base: Path, where: str) -> str | None:
    pf = _path(base, doc.password_file)
    if pf is None:
        return doc.password
    if pf.name.endswith(".sealed"):
        return None  # opened with the spool key when the agent starts (gateway.sealed)
    try:
        return pf.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayConfigError(
            f"{where}.password_file: cannot read {pf} ({exc}); write the path of a UTF-8 file "
            "holding the broker password, relative to the config file"
        ) from exc


def _cluster_ca(base: Path, raw: str | None, where: str) -> Path | None:
    """``tls_ca_file`` resolved and loaded once, so a bad one is named now, not at connect."""
    path = _path(base, raw)
    if path is not None:
        try:
            ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise GatewayConfigError(
                f"{where}.tls_ca_file: cannot load {path} as CA certificates ({exc}); write the "
                "path of a PEM file holding the CA that signed the party's certificate, "
                "relative to the config file (or remove the key to rely on the attested pin)"
            ) from exc
    return path


def _mqtt(doc: MqttDoc, base: Path, where: str) -> MqttSourceConfig:
    tls = None
    if doc.tls is not None:
        ca = base / doc.tls.ca_file
        tls = TlsConfig(ca, _path(base, doc.tls.cert_file), _path(base, doc.tls.key_file))
    return MqttSourceConfig(
        name=doc.name,
        host=doc.host,
        port=doc.port,
        client_id=doc.client_id,
        topics=tuple(
            TopicRule(
                filter=t.filter,
                sensor_template=t.sensor_template,
                format=t.format,
                value_path=tuple(t.value_path.split(".")),
                timestamp_path=None
                if t.timestamp_path is None
                else tuple(t.timestamp_path.split(".")),
            )
            for t in doc.topics
        ),
        username=doc.username,
        password=_password(doc, base, where),
        tls=tls,
        session_expiry_s=doc.session_expiry_s,
        keepalive_s=doc.keepalive_s,
        password_sealed=pf
        if (pf := _path(base, doc.password_file)) and pf.name.endswith(".sealed")
        else None,
    )


def _options(doc: NodeDoc | BrowseDoc) -> NodeOptions:
    db = doc.deadband
    return NodeOptions(
        sampling_ms=doc.sampling_ms,
        queue_size=doc.queue_size,
        deadband=DeadbandType.NONE if db is None else db.type,
        deadband_value=0.0 if db is None else db.value,
    )


def opcua_source(doc: OpcuaDoc, base: Path) -> OpcuaSourceConfig:
    """The runtime config of one ``sources.opcua`` entry; paths relative to ``base``."""
    s = doc.security
    return OpcuaSourceConfig(
        name=doc.name,
        url=doc.url,
        nodes=tuple(OpcuaNode(n.node_id, n.sensor, _options(n)) for n in doc.nodes),
        browse=tuple(OpcuaBrowse(b.folder, b.sensor_template, _options(b)) for b in doc.browse),
        security=OpcuaSecurity(
            policy=s.policy,
            mode=s.mode,
            certificate=_path(base, s.certificate),
            private_key=_path(base, s.private_key),
            server_certificate=_path(base, s.server_certificate),
            application_uri=s.application_uri,
            pin_server=s.pin_server,
        ),
        publishing_ms=doc.publishing_ms,
        subscribe_batch=doc.subscribe_batch,
        reconnect_min_s=doc.reconnect_min_s,
        reconnect_max_s=doc.reconnect_max_s,
    )


def to_runtime(f: GatewayFile, *, base: Path, source: str = "config") -> GatewayConfig:
    """The one conversion step from the validated file to the agent's config."""
    state_dir = base / f.state_dir
    b, p = f.batching, f.progress
    return GatewayConfig(
        gateway_id=f.gateway_id,
        state_dir=state_dir,
        sensors={
            s.id: SensorConfig(
                s.id,
                SensorRange(*s.range),
                s.unit,
                SensorRange(*s.scale_range) if s.scale_range else None,
            )
            for s in f.sensors
        },
        clusters=tuple(
            ClusterConfig(
                c.index,
                c.endpoints()[0].rstrip("/"),
                c.service_id,
                c.role,
                c.tls,
                _cluster_ca(base, c.tls_ca_file, f"{source}: $.clusters[{f.clusters.index(c)}]"),
                tuple(u.rstrip("/") for u in c.urls or ()),
            )
            for c in sorted(f.clusters, key=lambda c: c.index)
        ),
        attestation=AttestationConfig(
            platform_keys={k: bytes.fromhex(v) for k, v in f.attestation.platform_keys.items()},
            allowed_measurements=frozenset(
                bytes.fromhex(m) for m in f.attestation.allowed_measurements
            ),
            max_age_s=f.attestation.max_age_s,
        ),
        spool=SpoolConfig(_path(base, f.spool.path) or state_dir / "spool.db", f.spool.max_bytes),
        mqtt=tuple(
            _mqtt(m, base, f"{source}: $.sources.mqtt[{i}]") for i, m in enumerate(f.sources.mqtt)
        ),
        opcua=tuple(opcua_source(o, base) for o in f.sources.opcua),
        modbus=f.sources.modbus,
        batching=BatchingConfig(b.max_readings, b.max_delay_s, b.max_pending),
        progress=ProgressConfig(
            p.slack_s,
            p.interval_s,
            p.settle_s,
            p.max_hold_s,
            p.ordered_sensors,
            p.backfill_sensors,
            p.backfill_idle_s,
            p.max_future_skew_s,
        ),
        tpm=TpmConfig(
            f.tpm.tcti,
            f.tpm.pcrs,
            f.tpm.pcr_bank,
            f.tpm.measure_pcr,
            _path(base, f.tpm.owner_auth_file),
            f.tpm.enrol,
        ),
        http=HttpConfig(f.http.host, f.http.port),
        kem_suite=f.envelope.suite.value,
        columns=tuple(f.envelope.columns),
        value_bound_bits=f.envelope.value_bound_bits,
    )
