"""``tecc-gateway init``: browse / sample the plant, write a config, say what to do next.

Exit codes as the other commands: 0 written, 2 usage or an invalid result,
4 the server or broker could not be used (the message says what to do).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import OpcuaSecurity, SecurityMode, SecurityPolicy
from gateway.errors import GatewayConfigError, GatewayError
from gateway.init import mqtt as mqtt_init
from gateway.init.certs import ensure_client_certificate, thumbprints
from gateway.init.opcua import Discovery, Found, Secure, SensorIds, discover, sanitize
from gateway.init.writer import (
    Proposed,
    TrustDoc,
    build,
    cluster_flags,
    load_trust,
    placeholder_clusters,
    write,
)
from gateway.schema import (
    AttestationDoc,
    EnvelopeDoc,
    HttpDoc,
    MqttDoc,
    NodeDoc,
    OpcuaDoc,
    SecurityDoc,
    SensorDoc,
    SourcesDoc,
    TopicDoc,
    TpmDoc,
)
from gateway.sources.opcua_trust import ServerPin, advice
from tecc_contract.errors import ParameterError
from tecc_contract.fixedpoint import MAX_ABS_RANGE
from tecc_contract.scale import Scale


@dataclass(slots=True)
class Plan:
    """What goes into the file and what the summary says."""

    sensors: list[Proposed] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the printed summary
    opcua: list[OpcuaDoc] = field(default_factory=list)
    mqtt: list[MqttDoc] = field(default_factory=list)

    def add(self, doc: SensorDoc, note: str) -> None:
        """One proposed sensor."""
        self.sensors.append(Proposed(doc, note))
        self.notes[doc.id] = note


#: A Float/Double variable without EURange gets this range: a guess to review, not a limit
#: of the uplink (any range within ±2^30 is shared at its own scale, tecc_contract.scale).
_GUESS = 4096.0


def _unshareable(low: float, high: float, bits: int | None) -> str | None:
    """Why ``[low, high]`` cannot be declared as a sensor range (None: it can)."""
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        return f"range [{low:g}, {high:g}] is not a finite low < high"
    if max(abs(low), abs(high)) > MAX_ABS_RANGE:
        return f"range [{low:g}, {high:g}] exceeds ±2^30 (the config's limit): rescale"
    if bits is not None:
        try:
            Scale.for_range(low, high, bits)
        except ParameterError as exc:
            return f"{exc}: rescale"
    return None


def _opcua_sensor(f: Found, bits: int | None, plan: Plan) -> bool:
    """Add the sensor of one discovered variable; False (and a skip line) if it cannot be."""
    from gateway.init.opcua import NUMERIC  # noqa: PLC0415 - the table lives with the browse

    if f.range is not None:
        low, high = f.range
        note = f"EURange of {f.node_id}"
    else:
        t_low, t_high = next((lo, hi) for n, lo, hi in NUMERIC.values() if n == f.data_type)
        if math.isinf(t_low) or math.isinf(t_high):
            low, high = -_GUESS, _GUESS
            note = f"{f.node_id} has no EURange: range ±{_GUESS:g} is a guess, review"
        else:
            low, high = max(t_low, -MAX_ABS_RANGE), min(t_high, MAX_ABS_RANGE)
            note = f"{f.node_id} has no EURange: range = {f.data_type}'s (within ±2^30), review"
    why = _unshareable(low, high, bits)
    if why is not None:
        plan.skipped.append(f"{f.path} ({f.node_id}): {why}")
        return False
    plan.add(SensorDoc(id=f.sensor_id, range=(low, high), unit=f.unit), note)
    return True


def _secure(args: argparse.Namespace, state: Path, gateway_id: str) -> tuple[Secure, SecurityDoc]:
    name = args.source_name
    uri = f"urn:tecc:gateway:{gateway_id}"
    cert = ensure_client_certificate(
        state / f"opcua-{name}-client.der",
        state / f"opcua-{name}-client.key.pem",
        application_uri=uri,
        common_name=f"tecc gateway {gateway_id}",
    )
    mode = SecurityMode(args.security)
    runtime = OpcuaSecurity(
        SecurityPolicy.BASIC256SHA256, mode, cert.cert_path, cert.key_path, None, uri, True
    )
    pin = ServerPin(runtime, state, name)
    rel = Path(args.state_dir or "var/gateway")  # the config names files relative to itself
    doc = SecurityDoc(
        policy=SecurityPolicy.BASIC256SHA256,
        mode=mode,
        certificate=str(rel / cert.cert_path.name),
        private_key=str(rel / f"opcua-{name}.key.sealed"),
        application_uri=uri,
    )
    return Secure(mode, cert.der, cert.key_pem, uri, pin, cert.cert_path), doc


def _run_opcua(args: argparse.Namespace, state: Path, gateway_id: str, ids: SensorIds) -> Plan:
    plan = Plan()
    secure, sec_doc = (
        (None, SecurityDoc()) if args.security == "None" else _secure(args, state, gateway_id)
    )
    try:
        found = asyncio.run(discover(args.opcua, secure))
    except GatewayError:
        raise
    except Exception as exc:  # asyncua raises many kinds; each becomes one sentence
        raise GatewayError(_failure(args, exc, secure, sec_doc)) from exc
    _opcua_plan(args, found, secure=secure, sec_doc=sec_doc, ids=ids, plan=plan)
    return plan


def _failure(
    args: argparse.Namespace, exc: Exception, secure: Secure | None, sec: SecurityDoc
) -> str:
    """What to do about a failed session (the gateway source's advice, plus what to trust)."""
    if isinstance(exc, (OSError, TimeoutError)):
        return (
            f"OPC-UA {args.opcua}: {type(exc).__name__}: {exc}; check the endpoint URL (host, "
            "port, path) and that this machine reaches the server's port"
        )
    if secure is None:
        runtime = OpcuaSecurity(
            SecurityPolicy.NONE, SecurityMode.SIGN, None, None, None, None, False
        )
        pin = ServerPin(runtime, None, args.source_name)
        return f"OPC-UA {args.opcua}: {advice(exc, runtime, '', pin)}"
    runtime = OpcuaSecurity(
        SecurityPolicy.BASIC256SHA256,
        secure.mode,
        secure.certificate_path,
        None,
        None,
        secure.application_uri,
        True,
    )
    text = advice(exc, runtime, secure.application_uri, secure.pin)
    return f"OPC-UA {args.opcua}: {text}{_trust_lines(secure, sec, None)}"


def _trust_lines(secure: Secure | None, sec: SecurityDoc, found: Discovery | None) -> str:
    if secure is None:
        return ""
    sha1, sha256 = thumbprints(secure.certificate_der)
    text = (
        f"\n  trust on the server: the gateway certificate {secure.certificate_path}\n"
        f"    application URI {secure.application_uri}\n"
        f"    SHA-1 {sha1}\n    SHA-256 {sha256}\n"
        "    (most servers keep a refused client certificate in a 'rejected' list: move it "
        "to 'trusted', or copy the file into the server's trusted certificates)"
    )
    if found is not None and found.server_certificate is not None:
        s1, s256 = thumbprints(found.server_certificate)
        state = "pinned now (trust on first use)" if found.pinned else "matches the pin"
        text += (
            f"\n  server certificate {state}: {secure.pin.path}\n"
            f"    SHA-1 {s1}\n    SHA-256 {s256}\n"
            "    compare with the thumbprint your server displays; if it differs, delete the "
            "pin file and find out why"
        )
    return text


def _opcua_plan(
    args: argparse.Namespace,
    found: Discovery,
    *,
    secure: Secure | None,
    sec_doc: SecurityDoc,
    ids: SensorIds,
    plan: Plan,
) -> None:
    bits = EnvelopeDoc().value_bound_bits
    nodes = []
    for f in found.found:
        ids.take(f.sensor_id.split("."))  # reserve the id for the MQTT part
        if _opcua_sensor(f, bits, plan):
            nodes.append(NodeDoc(node_id=f.node_id, sensor=f.sensor_id))
    plan.skipped += [f"{s.path} ({s.node_id}): {s.reason}" for s in found.skipped]
    plan.lines.append(
        f"OPC-UA {args.opcua}: {len(nodes)} numeric variables -> sensors, "
        f"{len(plan.skipped)} skipped" + (" (browse truncated)" if found.truncated else "")
    )
    if secure is None and any(p != "None" for p, _ in found.endpoints):
        offered = ", ".join(f"{p} {m}" for p, m in found.endpoints if p != "None")
        plan.lines.append(
            f"  the server also offers {offered}: rerun with --security SignAndEncrypt"
        )
    plan.lines.append(_trust_lines(secure, sec_doc, found).lstrip("\n"))
    if nodes:
        plan.opcua.append(
            OpcuaDoc(name=args.source_name, url=args.opcua, nodes=tuple(nodes), security=sec_doc)
        )


def _run_mqtt(args: argparse.Namespace, gateway_id: str, ids: SensorIds, plan: Plan) -> None:
    host, _, port_text = args.mqtt.partition(":")
    try:
        port = int(port_text) if port_text else 1883
    except ValueError as exc:
        raise GatewayConfigError(f"--mqtt {args.mqtt!r}: write HOST or HOST:PORT") from exc
    if not args.topic:
        raise GatewayConfigError("--mqtt needs at least one --topic FILTER, e.g. --topic 'site/#'")
    got, summary = mqtt_init.sample(host, port, args.topic, args.sample_s)
    rules, skipped = mqtt_init.propose(got, ids)
    bits = EnvelopeDoc().value_bound_bits
    topics = []
    for r in rules:
        for sid, span in r.sensors.items():
            low, high = mqtt_init.widen(span)
            note = (
                f"observed {span.low:g}..{span.high:g} in {span.count} readings, widened: "
                f"review; {r.note}"
            )
            if low >= MAX_ABS_RANGE or high <= -MAX_ABS_RANGE:
                plan.skipped.append(f"{sid}: observed values lie beyond ±2^30; rescale")
                continue
            low, high = max(low, -MAX_ABS_RANGE), min(high, MAX_ABS_RANGE)
            why = _unshareable(low, high, bits)
            if why is not None:
                plan.skipped.append(f"{sid}: observed values {why}")
                continue
            plan.add(SensorDoc(id=sid, range=(low, high)), note)
        topics.append(
            TopicDoc(
                filter=r.filter,
                sensor_template=r.sensor_template,
                format=r.format,
                value_path=r.value_path,
                timestamp_path=r.timestamp_path,
            )
        )
    plan.skipped += [f"{t}: {why}" for t, why in skipped]
    plan.lines.append(
        f"MQTT {host}:{port} {args.topic}, {args.sample_s:g} s: {summary}; "
        f"{sum(len(r.sensors) for r in rules)} sensors proposed (observed ranges: review them)"
    )
    if topics:
        plan.mqtt.append(
            MqttDoc(
                name="mqtt",
                host=host,
                port=port,
                client_id=f"tecc-{gateway_id}",
                topics=tuple(topics),
            )
        )


def _trust(args: argparse.Namespace) -> TrustDoc | None:
    if args.trust is not None:
        return load_trust(args.trust)
    if args.cluster:
        _, att = placeholder_clusters()
        return TrustDoc(clusters=cluster_flags(args.cluster), attestation=att)
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``init``; returns the exit code (errors raise the gateway's exceptions)."""
    if not args.opcua and not args.mqtt:
        raise GatewayConfigError("init needs --opcua URL and/or --mqtt HOST[:PORT] --topic F")
    if args.out.exists() and not args.force:
        raise GatewayConfigError(f"{args.out} exists; pass --force to replace it or pick --out")
    trust = _trust(args)
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its session-timeout notes are noise
    gateway_id = args.gateway_id or f"gw-{sanitize(socket.gethostname())}"
    base = args.out.parent.resolve()
    extra: dict[str, Any] = {}
    if args.state_dir:
        extra["state_dir"] = args.state_dir
    state = base / (args.state_dir or "var/gateway")
    if args.tpm:
        extra["tpm"] = TpmDoc(tcti=args.tpm)
    if args.http_port is not None:
        extra["http"] = HttpDoc(port=args.http_port)
    ids = SensorIds()
    plan = _run_opcua(args, state, gateway_id, ids) if args.opcua else Plan()
    if args.mqtt:
        _run_mqtt(args, gateway_id, ids, plan)
    if not plan.sensors:
        raise GatewayError("no numeric sensor found; nothing to write (see the skipped list)")
    sources = SourcesDoc(opcua=tuple(plan.opcua), mqtt=tuple(plan.mqtt))
    doc = build(
        gateway_id=gateway_id, sensors=plan.sensors, sources=sources, trust=trust, extra=extra
    )
    header = [
        f"Written by `tecc-gateway init` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.",
        "Review every sensor (id, unit, range) before the first start, then run",
        f"`tecc-gateway check-config {args.out}`. Reference: configs/gateway.yaml, docs/CONFIG.md.",
        *(f"skipped: {s}" for s in plan.skipped[:200]),
        "",
    ]
    write(args.out, doc, plan.notes, header)
    for line in plan.lines:
        if line:
            print(line)
    for s in plan.skipped:
        print(f"  skipped: {s}")
    _next_steps(args, doc.clusters, doc.attestation, trust, sec=[o.security for o in plan.opcua])
    return 0


def _next_steps(
    args: argparse.Namespace,
    clusters: Any,
    att: AttestationDoc,
    trust: TrustDoc | None,
    sec: list[SecurityDoc],
) -> None:
    print(f"wrote {args.out}: review it, then `tecc-gateway check-config {args.out}`")
    if trust is None or "REPLACE-ME" in "".join(att.platform_keys):
        print(
            "  clusters/attestation are placeholders (REPLACE-ME): fill them in or rerun with "
            "--trust FILE; check-config names each key until then"
        )
    for s in sec:
        if s.private_key is not None and s.certificate is not None:
            clear = Path(s.certificate).with_name(Path(s.certificate).stem + ".key.pem")
            if not clear.is_absolute():
                clear = args.out.parent / clear
            print(
                "  after `tecc-gateway provision`, seal the OPC-UA client key into the TPM: "
                f"tecc-gateway launch --config {args.out} import-secret --file {clear} "
                f"--to {Path(s.private_key).name}"
            )
    del clusters
