"""Which gateway reads which simulated sensor, and the gateway configs that follow.

Pure functions over the simulator's sensor list (``firmware_sim sensors``):
:func:`assign_sensors` splits the sensors between ``n`` gateways (two
gateways and both transports: OPC-UA sensors on gw1, MQTT sensors on gw2, so
every sensor class appears on both; otherwise machines round-robin, or
sensors round-robin when there are fewer machines than gateways) and
:func:`gateway_config` writes one gateway's YAML document; :func:`load_policy`
reads and validates the clusters' analytics policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cloud_tecc.analytics.policy import AnalyticsPolicy, policy_from_mapping
from cloud_tecc.errors import CloudError
from tecc_contract.scale import Scale

OPCUA_NAMESPACE_INDEX = 2


class PolicyError(ValueError):
    """An analytics policy file cannot be used; the message names the file and the problem."""


def load_policy(path: Path) -> dict[str, Any]:
    """The policy document at ``path``, validated; :class:`PolicyError` names what is wrong."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise PolicyError(f"policy {path}: must be a YAML mapping of policy keys")
        policy_from_mapping(doc)
    except OSError as exc:
        raise PolicyError(f"policy {path}: {exc.strerror}; pass an existing file") from exc
    except (yaml.YAMLError, CloudError) as exc:
        raise PolicyError(f"policy {path}: {exc}") from exc
    return doc


# the simulator registers its namespace first


@dataclass(frozen=True, slots=True)
class SimSensor:
    """One sensor as the simulator declares it."""

    sensor: str
    machine: str
    unit: str
    low: float
    high: float
    transport: str
    topic: str | None
    payload: str | None = None  # MQTT payload format; "plain" carries no timestamp
    qos: int | None = None
    modbus: Mapping[str, Any] | None = None  # register address, type, orders, scale

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SimSensor:
        """Parse one element of ``firmware_sim sensors`` output."""
        low, high = obj["range"]
        return cls(
            sensor=str(obj["sensor"]),
            machine=str(obj["machine"]),
            unit=str(obj["unit"]),
            low=float(low),
            high=float(high),
            transport=str(obj["transport"]),
            topic=str(obj["topic"]) if obj.get("topic") else None,
            payload=str(obj["payload"]) if obj.get("payload") else None,
            qos=int(obj["qos"]) if obj.get("qos") is not None else None,
            modbus=dict(obj["modbus"]) if obj.get("modbus") else None,
        )


DEMO_SLACK_S = 0.6
#: Modbus poll period of the demo's gateways (the simulator's sensors sample at 10 Hz).
MODBUS_POLL_MS = 100
#: Sparkplug B sensor ids: the simulator's group is the line, its edge node the machine.
SPARKPLUG_TEMPLATE = "{group}.{node}.{metric}"


def gateway_ids(n: int) -> list[str]:
    """Gateway ids ``gw1`` … ``gwN``."""
    if n < 1:
        raise ValueError("the pipeline needs at least one gateway")
    return [f"gw{i + 1}" for i in range(n)]


def assign_sensors(sensors: Sequence[SimSensor], n: int) -> dict[str, list[SimSensor]]:
    """Split ``sensors`` between ``n`` gateways; every gateway gets at least one."""
    ids = gateway_ids(n)
    if len(sensors) < n:
        raise ValueError(f"at most {len(sensors)} gateways (one per sensor) for this line")
    out: dict[str, list[SimSensor]] = {g: [] for g in ids}
    machines = sorted({s.machine for s in sensors})
    if n == 2 and {s.transport for s in sensors} == {"opcua", "mqtt"}:
        for s in sensors:
            out[ids[0] if s.transport == "opcua" else ids[1]].append(s)
    elif n <= len(machines):
        for s in sensors:
            out[ids[machines.index(s.machine) % n]].append(s)
    else:
        for i, s in enumerate(sensors):
            out[ids[i % n]].append(s)
    return out


def class_scale_ranges(
    policy: AnalyticsPolicy, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Per sensor of a fleet class whose members' ranges differ: the union of their ranges.

    The sensors of one class must share one scale (their class sums are
    meaningful only then), so each gets ``scale_range`` = the union of the
    class's declared ranges (e.g. spindles of 0–12,000 and 0–24,000 rpm share
    the scale of 0–24,000).
    """
    members: dict[str, list[str]] = {}
    for sid in ranges:
        name = policy.fleet_class(sid)
        if name is not None:
            members.setdefault(name, []).append(sid)
    out: dict[str, tuple[float, float]] = {}
    for sids in members.values():
        spans = {ranges[s] for s in sids}
        if len(spans) > 1:
            union = (min(lo for lo, _ in spans), max(hi for _, hi in spans))
            out.update(dict.fromkeys(sids, union))
    return out


def sensor_scales(
    policy: AnalyticsPolicy, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, Scale]:
    """The scale each sensor is shared in by the demo's gateways (for the reference)."""
    bits = policy.value_bound_bits
    shared = class_scale_ranges(policy, ranges)
    return {s: Scale.for_range(*shared.get(s, r), bits) for s, r in ranges.items()}


def _sensor_doc(s: SimSensor, scale_ranges: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": s.sensor, "unit": s.unit, "range": [s.low, s.high]}
    if s.sensor in scale_ranges:
        doc["scale_range"] = list(scale_ranges[s.sensor])
    return doc


def gateway_config(
    gateway_id: str,
    sensors: Sequence[SimSensor],
    *,
    state_dir: Path,
    mqtt_port: int,
    opcua_port: int,
    tpm_port: int,
    http_port: int,
    clusters: Sequence[tuple[int, str | Sequence[str], str]],
    platforms: Mapping[str, str],
    measurement: str,
    backfill: Sequence[str] = (),
    backfill_idle_s: float = 30.0,
    scale_ranges: Mapping[str, tuple[float, float]] | None = None,
    modbus_port: int = 0,
) -> dict[str, Any]:
    """The gateway YAML document (see configs/gateway.yaml for the annotated reference).

    ``backfill`` lists sensors that replay history (``progress.backfill_sensors``).
    Modbus and Sparkplug B sensors get their sources from :func:`plant_sources`.
    """
    mqtt = [s for s in sensors if s.transport == "mqtt"]
    opcua = [s for s in sensors if s.transport == "opcua"]
    sources: dict[str, Any] = {"mqtt": [], "opcua": []}
    if mqtt:
        sources["mqtt"].append(
            {
                "name": "sensors",
                "host": "127.0.0.1",
                "port": mqtt_port,
                "client_id": f"tecc-{gateway_id}",
                "session_expiry_s": 604800,
                "topics": [
                    {
                        "filter": s.topic,
                        "sensor_template": s.sensor,
                        "format": "auto",
                        "value_path": "value",
                        "timestamp_path": "ts",
                    }
                    for s in mqtt
                ],
            }
        )
    if opcua:
        sources["opcua"].append(
            {
                "name": "plc",
                "url": f"opc.tcp://127.0.0.1:{opcua_port}/tecc/sim",
                "publishing_ms": 100,
                "security": {"policy": "None"},
                "nodes": [
                    {
                        "node_id": f"ns={OPCUA_NAMESPACE_INDEX};s={s.sensor}",
                        "sensor": s.sensor,
                        "sampling_ms": 0,
                        "queue_size": 100,
                    }
                    for s in opcua
                ],
            }
        )
    for kind, extra in plant_sources(gateway_id, sensors, mqtt_port, modbus_port).items():
        sources.setdefault(kind, []).extend(extra)
    return {
        "gateway_id": gateway_id,
        "state_dir": str(state_dir),
        "sensors": [_sensor_doc(s, scale_ranges or {}) for s in sensors],
        "sources": sources,
        "batching": {"max_readings": 20000, "max_delay_s": 0.1, "max_pending": 2000000},
        # Sensors on loopback with the gateway's clock: the slack covers the slowest
        # publisher (json_batch, 0.3 s per message in configs/demo/sim.yaml) plus transit.
        "progress": {
            "slack_s": DEMO_SLACK_S,
            "interval_s": 0.1,
            **(
                {"backfill_sensors": list(backfill), "backfill_idle_s": backfill_idle_s}
                if backfill
                else {}
            ),
        },
        "spool": {"path": str(state_dir / "spool.db"), "max_bytes": 1 << 30},
        "clusters": [_cluster_doc(i, u, sid) for i, u, sid in clusters],
        "attestation": {
            "platform_keys": dict(platforms),  # key id -> hex: each cluster's own platform
            "allowed_measurements": [measurement],
            "max_age_s": 300,
        },
        "tpm": {"tcti": f"swtpm:host=127.0.0.1,port={tpm_port}", "pcrs": [7, 14]},
        "http": {"host": "127.0.0.1", "port": http_port},
        "envelope": {"suite": "x25519", "columns": ["value", "square"]},
    }


def _cluster_doc(index: int, urls: str | Sequence[str], service_id: str) -> dict[str, Any]:
    """A ``clusters:`` entry: ``url:`` for one ingest endpoint, ``urls:`` for several."""
    many = [urls] if isinstance(urls, str) else list(urls)
    where: dict[str, Any] = {"url": many[0]} if len(many) == 1 else {"urls": many}
    return {"index": index, **where, "service_id": service_id}


def plant_sources(
    gateway_id: str, sensors: Sequence[SimSensor], mqtt_port: int, modbus_port: int
) -> dict[str, list[dict[str, Any]]]:
    """The ``sources.modbus`` and Sparkplug ``sources.mqtt`` entries for ``sensors``.

    Modbus: one source on the simulated device, one group per unit polled at
    the fastest sensor's period, each sensor's point as ``tecc-sim sensors``
    describes it. Sparkplug B: one MQTT source of its own (its own session),
    one topic rule per edge node (machine), ids ``{group}.{node}.{metric}``.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    regs = [s for s in sensors if s.transport == "modbus" and s.modbus is not None]
    if regs:
        units: dict[int, list[dict[str, Any]]] = {}
        for s in regs:
            m = s.modbus or {}
            units.setdefault(int(m["unit_id"]), []).append(
                {
                    "sensor": s.sensor,
                    "kind": m["table"],
                    "address": int(m["address"]),
                    "type": m["type"],
                    "byte_order": m["byte_order"],
                    "word_order": m["word_order"],
                    "scale": float(m["scale"]),
                }
            )
        out["modbus"] = [
            {
                "name": "modbus",
                "host": "127.0.0.1",
                "port": modbus_port,
                "groups": [
                    {"unit": unit, "interval_ms": MODBUS_POLL_MS, "points": points}
                    for unit, points in sorted(units.items())
                ],
            }
        ]
    filters = sorted({s.topic for s in sensors if s.transport == "sparkplug" and s.topic})
    if filters:
        out["mqtt"] = [
            {
                "name": "sparkplug",
                "host": "127.0.0.1",
                "port": mqtt_port,
                "client_id": f"tecc-{gateway_id}-sparkplug",
                "session_expiry_s": 604800,
                "topics": [
                    {"filter": f, "sensor_template": SPARKPLUG_TEMPLATE, "format": "sparkplug_b"}
                    for f in filters
                ],
            }
        ]
    return out
