"""Fuzz the Sparkplug B host's DATA decoding: the columnar path against the protobuf library.

Each case is one NDATA payload sent to edge nodes whose births are known and
whose steady-state shape is compiled (one node per seed shape, see
:mod:`gateway.sources.sparkplug_wire`). A host with the columnar path and one
without it (``columnar=False``) must return the same readings, rejects,
rebirth requests and reason; every reading is a float, and nothing raises.
"""

from __future__ import annotations

import math
from typing import Any

from fuzzing.harness import Target
from gateway.sources.sparkplug import Received, SparkplugHost
from tecc_contract.sparkplug import Payload, SparkplugType

T = SparkplugType
_NOW = 1_750_000_000_000_000_000
_BIRTH = [
    {"name": "bdSeq", "datatype": T.INT64, "long_value": 0},
    {"name": "Oil/Temp", "alias": 1, "datatype": T.DOUBLE, "double_value": 40.0},
    {"name": "Speed", "alias": 2, "datatype": T.INT32, "int_value": 10},
    {"name": "Flow", "alias": 3, "datatype": T.FLOAT, "float_value": 1.5},
    {"name": "On", "alias": 4, "datatype": T.BOOLEAN, "boolean_value": True},
    {"name": "Count", "alias": 5, "datatype": T.INT64, "long_value": 5},
]


def _payload(seq: int, metrics: list[dict[str, Any]], ts_ms: int | None) -> bytes:
    p = Payload(seq=seq)
    if ts_ms is not None:
        p.timestamp = ts_ms
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


_TS = 1_750_000_000_123
_SEEDS = [
    _payload(2, [{"alias": a, "timestamp": _TS, "double_value": 41.5} for a in (1, 1, 1)], _TS),
    _payload(
        2,
        [
            {"alias": 1, "timestamp": _TS, "double_value": 41.5},
            {"alias": 2, "timestamp": _TS, "int_value": 0xFFFFFFFE},
            {"alias": 3, "float_value": 2.5},
            {"alias": 4, "boolean_value": False},
            {"alias": 5, "long_value": 2**64 - 3},
            {"alias": 1, "is_null": True},
            {"name": "bdSeq", "long_value": 1},
        ],
        None,
    ),
    _payload(2, [{"name": "Oil/Temp", "double_value": math.nan}, {"alias": 3}], _TS),
]


def _same(a: Received, b: Received) -> None:
    assert list(a.sensors) == list(b.sensors), (a.sensors, b.sensors)
    assert a.stamps == b.stamps
    assert all(type(v) is float for v in (*a.values, *b.values))
    assert [repr(x) for x in a.values] == [repr(x) for x in b.values]  # nan == nan here
    assert (a.rejects, a.rebirth, a.stale, a.live, a.reason) == (
        b.rejects,
        b.rebirth,
        b.stale,
        b.live,
        b.reason,
    )


def run(data: bytes) -> None:
    """Send ``data`` as NDATA to one node per seed shape; both paths must agree."""
    hosts = (SparkplugHost(), SparkplugHost(columnar=False))
    for k, seed in enumerate(_SEEDS):
        node = f"n{k}"
        for host in hosts:
            host.receive(f"spBv1.0/g/NBIRTH/{node}", _payload(0, _BIRTH, _TS), _NOW)
            host.receive(f"spBv1.0/g/NDATA/{node}", _payload(1, [], None), _NOW)
            host.receive(f"spBv1.0/g/NDATA/{node}", seed, _NOW)  # compiles the seed's shape
        topic = f"spBv1.0/g/NDATA/{node}"
        _same(hosts[0].receive(topic, data, _NOW), hosts[1].receive(topic, data, _NOW))


TARGET = Target("sparkplug", _SEEDS, run, ())
