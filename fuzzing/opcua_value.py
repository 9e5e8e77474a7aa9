"""Fuzz OPC-UA value conversion: DataValues off the wire into validated readings.

Each case is decoded as a binary ``DataValue`` by asyncua's own decoder (what
the client library would hand the subscription; bytes it cannot decode never
reach the gateway and count as :class:`Undeliverable`). The decoded value goes
through the gateway's real notification path, ``_BulkSubscription._rows`` and
``Ingest.offer_rows``, which must never raise: a value is queued as a finite,
in-range float or counted as rejected.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from fuzzing.harness import Target
from gateway.config import SensorConfig
from gateway.config_yaml import opcua_source
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.schema import NodeDoc, OpcuaDoc
from gateway.sources.opcua import OpcuaSource, _BulkSubscription
from tecc_contract.fixedpoint import SensorRange


class Undeliverable(Exception):  # noqa: N818 - names the outcome, not an error of ours
    """asyncua's decoder refused the bytes; the gateway would never see them."""


_T: Any = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
_VARIANTS = [
    ua.Variant(21.5, ua.VariantType.Double),
    ua.Variant(1.25, ua.VariantType.Float),
    ua.Variant(-7, ua.VariantType.Int32),
    ua.Variant(2**63 - 1, ua.VariantType.Int64),
    ua.Variant(2**64 - 1, ua.VariantType.UInt64),
    ua.Variant(255, ua.VariantType.Byte),
    ua.Variant(True, ua.VariantType.Boolean),
    ua.Variant("12.5", ua.VariantType.String),
    ua.Variant(b"\x00\x01", ua.VariantType.ByteString),
    ua.Variant([1.0, 2.0], ua.VariantType.Double),
    ua.Variant(_T, ua.VariantType.DateTime),
    ua.Variant(None, ua.VariantType.Null),
    ua.Variant(float("nan"), ua.VariantType.Double),
    ua.Variant(ua.LocalizedText("x"), ua.VariantType.LocalizedText),
]
_SEEDS = [
    struct_to_binary(ua.DataValue(v, SourceTimestamp=_T, ServerTimestamp=_T)) for v in _VARIANTS
] + [
    struct_to_binary(ua.DataValue(_VARIANTS[0], StatusCode=ua.StatusCode(ua.UInt32(0x80000000)))),
    struct_to_binary(ua.DataValue(_VARIANTS[0])),
]


def _subscription(ingest: Ingest) -> _BulkSubscription:
    doc = OpcuaDoc(
        url="opc.tcp://127.0.0.1:4840", name="plc", nodes=(NodeDoc(node_id="ns=2;i=1", sensor="s"),)
    )
    cfg = opcua_source(doc, Path("."))
    source = OpcuaSource(cfg, ingest, Metrics(ingest), sensors={"s"})
    sub = object.__new__(_BulkSubscription)
    sub._source = source
    sub._sensor_by_handle = {1: "s"}
    sub._monitored_items = {}
    return sub


def _decode(data: bytes) -> Any:
    # asyncua 2.1 loops over a Variant array's declared length even when no bytes
    # follow (a Null array claiming 2^31 elements decodes for minutes): a finding
    # against the library, recorded in docs/THREAT_MODEL.md. Such claims are
    # screened out here so the target stays bounded.
    claimed = int.from_bytes(data[2:6], "little", signed=True) if len(data) >= 6 else 0
    if len(data) >= 6 and data[0] & 1 and data[1] & 0x80 and claimed > len(data):
        raise Undeliverable("array length beyond the message")
    try:
        return struct_from_binary(ua.DataValue, Buffer(data))
    except Exception as exc:  # asyncua's decoder raises many types; all mean "not delivered"
        raise Undeliverable(type(exc).__name__) from exc


def run(data: bytes) -> None:
    """Decode ``data`` as a DataValue and push it through the gateway's OPC-UA path."""
    dv = _decode(data)
    ingest = _INGEST
    ingest.rejected.clear()
    sub = _SUB
    notif = ua.DataChangeNotification(
        MonitoredItems=[
            ua.MonitoredItemNotification(ClientHandle=1, Value=dv),
            ua.MonitoredItemNotification(ClientHandle=2, Value=dv),
        ]
    )
    rows, bad = sub._rows(notif)
    assert all(isinstance(ts, int) for _, ts, _ in rows)
    queued = ingest.offer_rows("plc", rows, bad)
    drained = ingest.drain()
    assert queued == len(drained.values) <= 1
    assert all(type(v) is float and math.isfinite(v) and abs(v) <= 1000 for v in drained.values)
    assert sum(ingest.rejected.values()) == len(rows) + len(bad) - queued


_INGEST = Ingest({"s": SensorConfig("s", SensorRange(-1000.0, 1000.0), "")})
_SUB = _subscription(_INGEST)
TARGET = Target("opcua_value", _SEEDS, run, (Undeliverable,))
