"""What each delivery target receives (pure): Alertmanager alerts, signed webhooks, MQTT messages.

* **Alertmanager** (API v2, ``POST /api/v2/alerts``): one alert per incident,
  labels ``alertname=TeccIncident`` plus gateway, sensor, detector and the
  incident id, so Alertmanager groups, routes and silences by them (a
  gateway's attestation incident: detector ``attestation``, sensor ""). An open or
  acknowledged incident is sent with ``endsAt`` ``hold_s`` ahead and re-sent
  every ``refresh_s`` (Alertmanager resolves an alert that is not refreshed);
  a closed one with ``endsAt`` = its end, which resolves it.
* **Webhooks**: the JSON body ``{"key", "transition", "incident"}``; headers
  ``X-Tecc-Idempotency-Key`` (the transition key: receivers drop repeats),
  ``X-Tecc-Timestamp`` and ``X-Tecc-Signature: sha256=<hex>``, an
  HMAC-SHA256 under the target's secret over ``timestamp + "." + body``
  (:func:`verify_webhook` is the receiver's check; stale timestamps refused).
* **MQTT**: a topic from a template over gateway, sensor, detector and state,
  and either the webhook's JSON body or a Sparkplug B payload whose metrics
  carry the incident's fields (for SCADA systems that speak only Sparkplug).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from cloud_tecc.output.incidents import ATTESTATION
from tecc_contract.sparkplug import Payload, SparkplugType

ALERTNAME: Final = "TeccIncident"
SIGNATURE_HEADER: Final = "X-Tecc-Signature"
TIMESTAMP_HEADER: Final = "X-Tecc-Timestamp"
KEY_HEADER: Final = "X-Tecc-Idempotency-Key"


class MqttFormat(enum.StrEnum):
    """Payload of incident messages published over MQTT."""

    JSON = "json"
    SPARKPLUG = "sparkplug"


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def _summary(incident: Mapping[str, Any]) -> str:
    if incident["detector"] == ATTESTATION:
        return (
            f"gateway {incident['gateway']} suspended by {incident['flags']} cluster(s): its "
            "TPM quote changed or stopped; its data is refused there"
        )
    return (
        f"{incident['detector']} on {incident['sensor']} ({incident['gateway']}): "
        f"{incident['flags']} flagged readings"
    )


def alert(
    incident: Mapping[str, Any], now_ns: int, *, hold_s: float, dashboard: str = ""
) -> dict[str, Any]:
    """The Alertmanager alert of one incident in its current state."""
    closed = incident["state"] == "closed"
    ends = int(incident["end_ns"]) if closed else now_ns + int(hold_s * 1e9)
    worst = incident.get("worst_window") or {}
    doc: dict[str, Any] = {
        "labels": {
            "alertname": ALERTNAME,
            "gateway": str(incident["gateway"]),
            "sensor": str(incident["sensor"]),
            "detector": str(incident["detector"]),
            "incident": str(incident["id"]),
        },
        "annotations": {
            "summary": _summary(incident),
            "state": str(incident["state"]),
            "flags": str(incident["flags"]),
            "acknowledged_by": str(incident.get("acknowledged_by") or ""),
            "worst_window_mean": "" if worst.get("mean") is None else f"{worst['mean']:.6g}",
        },
        "startsAt": _iso(int(incident["start_ns"])),
        "endsAt": _iso(max(ends, int(incident["start_ns"]) + 1)),
    }
    if dashboard:
        doc["generatorURL"] = f"{dashboard.rstrip('/')}/?incident={incident['id']}"
    return doc


def webhook_body(key: str, incident: Mapping[str, Any]) -> bytes:
    """The JSON body of one transition."""
    return json.dumps(
        {"key": key, "transition": incident["state"], "incident": dict(incident)},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def sign_webhook(secret: bytes, body: bytes, timestamp_s: int) -> str:
    """``sha256=<hex>`` HMAC-SHA256 over ``timestamp.body``."""
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(str(timestamp_s).encode() + b"." + body)
    return "sha256=" + mac.finalize().hex()


def verify_webhook(
    secret: bytes, body: bytes, timestamp: str, signature: str, now_s: int, *, max_skew_s: int = 300
) -> bool:
    """A receiver's check: the signature matches and the timestamp is fresh."""
    if not timestamp.isdigit() or abs(now_s - int(timestamp)) > max_skew_s:
        return False
    want = sign_webhook(secret, body, int(timestamp)).encode()
    return constant_time.bytes_eq(want, signature.encode())


def webhook_headers(secret: bytes, key: str, body: bytes, timestamp_s: int) -> dict[str, str]:
    """Headers of one webhook request."""
    return {
        "Content-Type": "application/json",
        KEY_HEADER: key,
        TIMESTAMP_HEADER: str(timestamp_s),
        SIGNATURE_HEADER: sign_webhook(secret, body, timestamp_s),
    }


def mqtt_topic(template: str, incident: Mapping[str, Any]) -> str:
    """The topic of one transition: ``template`` over gateway, sensor, detector, state, id.

    MQTT wildcards and empty levels are removed from the substituted values.
    """

    def clean(v: object) -> str:
        return "".join(c for c in str(v) if c not in "+#/\x00") or "_"

    return template.format(
        gateway=clean(incident["gateway"]),
        sensor=clean(incident["sensor"]),
        detector=clean(incident["detector"]),
        state=clean(incident["state"]),
        id=clean(incident["id"]),
    )


def mqtt_payload(fmt: MqttFormat, key: str, incident: Mapping[str, Any], now_ns: int) -> bytes:
    """The message body: the webhook JSON, or a Sparkplug B payload of the incident's fields."""
    if fmt is MqttFormat.JSON:
        return webhook_body(key, incident)
    ms = now_ns // 1_000_000
    p = Payload(timestamp=ms)
    p.metrics.add(name="key", timestamp=ms, datatype=SparkplugType.STRING, string_value=key)
    for name in ("gateway", "sensor", "detector", "state"):
        p.metrics.add(
            name=f"Incident/{name}",
            timestamp=ms,
            datatype=SparkplugType.STRING,
            string_value=str(incident[name]),
        )
    for name in ("id", "flags", "start_ns", "end_ns"):
        p.metrics.add(
            name=f"Incident/{name}",
            timestamp=ms,
            datatype=SparkplugType.INT64,
            long_value=int(incident[name]) & (2**64 - 1),
        )
    return bytes(p.SerializeToString())
