"""The Sparkplug B payload schema (Sparkplug 3.0 §6.4, ``org.eclipse.tahu.protobuf.Payload``).

Built at import time as a protobuf descriptor, so no generated code and no
``protoc`` step: the message classes come from the maintained ``protobuf``
runtime (``message_factory.GetMessageClass``). Field numbers and types are
the specification's. Only what a telemetry host needs is declared — payload
timestamp/metrics/seq/uuid/body and, per metric, name, alias, timestamp,
datatype, the historical/transient/null flags and the scalar value fields.
Fields left out (metadata, property sets, data sets, templates) are skipped
by the parser as unknown fields, so a payload that carries them still
decodes.

Why not ``pysparkplug``: it pins ``paho-mqtt<2`` while the gateway (and
aiomqtt) need paho-mqtt 2; this module shares nothing but the schema.

It lives in the shared package because three parts speak it: the gateway's
Sparkplug source decodes it, the simulator's edge node
(``firmware_sim/sparkplug_node.py``) and the output service's MQTT incident
delivery encode it. It is the standard's schema, not logic of either side.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

#: (name, number, type, label, oneof index or None, message type name or None)
_METRIC_FIELDS: Final = (
    ("name", 1, _F.TYPE_STRING, _OPT, None),
    ("alias", 2, _F.TYPE_UINT64, _OPT, None),
    ("timestamp", 3, _F.TYPE_UINT64, _OPT, None),
    ("datatype", 4, _F.TYPE_UINT32, _OPT, None),
    ("is_historical", 5, _F.TYPE_BOOL, _OPT, None),
    ("is_transient", 6, _F.TYPE_BOOL, _OPT, None),
    ("is_null", 7, _F.TYPE_BOOL, _OPT, None),
    ("int_value", 10, _F.TYPE_UINT32, _OPT, 0),
    ("long_value", 11, _F.TYPE_UINT64, _OPT, 0),
    ("float_value", 12, _F.TYPE_FLOAT, _OPT, 0),
    ("double_value", 13, _F.TYPE_DOUBLE, _OPT, 0),
    ("boolean_value", 14, _F.TYPE_BOOL, _OPT, 0),
    ("string_value", 15, _F.TYPE_STRING, _OPT, 0),
    ("bytes_value", 16, _F.TYPE_BYTES, _OPT, 0),
)
_PAYLOAD_FIELDS: Final = (
    ("timestamp", 1, _F.TYPE_UINT64, _OPT),
    ("seq", 3, _F.TYPE_UINT64, _OPT),
    ("uuid", 4, _F.TYPE_STRING, _OPT),
    ("body", 5, _F.TYPE_BYTES, _OPT),
)
_PACKAGE: Final = "org.eclipse.tahu.protobuf"


class SparkplugType(enum.IntEnum):
    """Metric data types (Sparkplug 3.0 §6.4.16)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


def _build() -> tuple[Any, Any]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="tecc_sparkplug_b.proto", package=_PACKAGE, syntax="proto2"
    )
    payload = fd.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    for name, number, ftype, label, oneof in _METRIC_FIELDS:
        f = metric.field.add(name=name, number=number, type=ftype, label=label)
        if oneof is not None:
            f.oneof_index = oneof
    for name, number, ftype, label in _PAYLOAD_FIELDS:
        payload.field.add(name=name, number=number, type=ftype, label=label)
    payload.field.add(
        name="metrics",
        number=2,
        type=_F.TYPE_MESSAGE,
        label=_REP,
        type_name=f".{_PACKAGE}.Payload.Metric",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    payload_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Payload"))
    metric_cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{_PACKAGE}.Payload.Metric")
    )
    return payload_cls, metric_cls


#: ``Payload`` message class (``Payload.Metric`` is its nested metric class).
Payload, Metric = _build()
