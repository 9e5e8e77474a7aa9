"""Columnar Sparkplug DATA decoding (compiled wire layouts) against the protobuf library path.

Every test feeds the same messages to a host with the columnar path and to one
without it (``columnar=False``: every message through ``Payload.FromString``)
and requires identical results: readings, rejects, rebirth requests, stale
and live sensors, and the reason logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sources.sparkplug import Received, SparkplugHost
from gateway.sources.sparkplug_wire import Varints, compile_layout
from tecc_contract.errors import RejectReason
from tecc_contract.sparkplug import Payload, SparkplugType

T = SparkplugType
G, N = "plant", "press1"
NOW = 1_700_000_000_000_000_000
BIRTH_TYPES = [T.DOUBLE, T.FLOAT, T.INT8, T.INT16, T.INT32, T.INT64, T.UINT32, T.UINT64]
BIRTH_TYPES += [T.BOOLEAN, T.STRING, T.DATETIME]
KINDS: list[str | None] = ["double_value", "float_value", "int_value", "long_value"]
KINDS += ["boolean_value", "string_value", None]


def _payload(seq: int | None, metrics: list[dict[str, Any]], ts_ms: int | None) -> bytes:
    p = Payload()
    if ts_ms is not None:
        p.timestamp = ts_ms
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def _same(a: Received, b: Received) -> None:
    """Both results are identical (NaN equal to NaN)."""
    assert list(a.sensors) == list(b.sensors)
    assert a.stamps == b.stamps
    assert len(a.values) == len(b.values)
    for x, y in zip(a.values, b.values, strict=True):
        assert type(x) is float
        assert type(y) is float
        assert (math.isnan(x) and math.isnan(y)) or x == y
    assert a.rejects == b.rejects
    assert a.rebirth == b.rebirth
    assert a.stale == b.stale
    assert a.live == b.live
    assert a.reason == b.reason


def _pair() -> tuple[SparkplugHost, SparkplugHost]:
    return SparkplugHost(rebirth_holdoff_ns=0), SparkplugHost(rebirth_holdoff_ns=0, columnar=False)


def _feed(hosts: tuple[SparkplugHost, SparkplugHost], topic: str, payload: bytes) -> Received:
    fast, ref = hosts
    got = fast.receive(topic, payload, NOW)
    _same(got, ref.receive(topic, payload, NOW))
    return got


@dataclass(frozen=True)
class Spec:
    """One metric of a DATA message shape: how it is addressed and what it carries."""

    name: str | None
    alias: int | None
    kind: str | None
    ts: bool
    null: bool


def _value(kind: str) -> st.SearchStrategy[Any]:
    return {
        "double_value": st.floats(allow_nan=True, allow_infinity=True),
        "float_value": st.floats(width=32, allow_nan=True, allow_infinity=True),
        "int_value": st.integers(0, 2**32 - 1),
        "long_value": st.integers(0, 2**64 - 1),
        "boolean_value": st.booleans(),
        "string_value": st.text(max_size=3),
    }[kind]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[str, list[tuple[str, bytes]]]:
    """Births (NBIRTH, or NBIRTH + DBIRTH) and DATA messages of one shape, values drawn."""
    n = draw(st.integers(1, 5))
    device = draw(st.sampled_from(["", "pump"]))
    types = [draw(st.sampled_from(BIRTH_TYPES)) for _ in range(n)]
    birth = [{"name": f"m/{i}", "alias": i + 1, "datatype": t} for i, t in enumerate(types)]
    addresses: list[tuple[str | None, int | None]] = [(None, i + 1) for i in range(n)]
    addresses += [(f"m/{i}", None) for i in range(n)]
    addresses += [(None, 99), ("nope", None), ("bdSeq", None), ("Properties/x", None)]
    specs = []
    for _ in range(draw(st.integers(0, 6))):
        name, alias = draw(st.sampled_from(addresses))
        kind, ts = draw(st.sampled_from(KINDS)), draw(st.booleans())
        specs.append(Spec(name, alias, kind, ts, draw(st.sampled_from([False, False, True]))))
    has_ts, has_seq = draw(st.booleans()), draw(st.sampled_from([True, True, True, False]))
    stamp = st.integers(1_600_000_000_000, 1_800_000_000_000)
    node_metrics = [{"name": "bdSeq", "datatype": T.INT64, "long_value": 0}]
    msgs = [(f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, node_metrics + ([] if device else birth), 1))]
    topic = f"spBv1.0/{G}/NDATA/{N}"
    seq = 0
    if device:
        seq = 1
        msgs.append((f"spBv1.0/{G}/DBIRTH/{N}/{device}", _payload(1, birth, None)))
        topic = f"spBv1.0/{G}/DDATA/{N}/{device}"
    seq += draw(st.sampled_from([0, 0, 119, 249]))  # a jump: a gap, and later a wrap at 256
    for gap in draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 0]), min_size=1, max_size=8)):
        seq = (seq + gap) % 256
        metrics = []
        for sp in specs:
            m: dict[str, Any] = {}
            if sp.name is not None:
                m["name"] = sp.name
            if sp.alias is not None:
                m["alias"] = sp.alias
            if sp.ts:
                m["timestamp"] = draw(stamp)
            if sp.null:
                m["is_null"] = True
            if sp.kind is not None:
                m[sp.kind] = draw(_value(sp.kind))
            metrics.append(m)
        payload_ts = draw(stamp) if has_ts else None
        msgs.append((topic, _payload(seq if has_seq else None, metrics, payload_ts)))
    return topic, msgs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_columnar_equals_library_on_random_messages(s: tuple[str, list[tuple[str, bytes]]]) -> None:
    """Random births and DATA shapes (nulls, no values, strings, unknown aliases, NaN, ±inf,
    two's-complement ints, gaps, missing timestamps/seq): the two paths agree on every message."""
    topic, msgs = s
    hosts = _pair()
    for t, payload in msgs:
        _feed(hosts, t, payload)
        if t == topic:
            _feed(hosts, t, payload)  # the same bytes again: a sequence gap, same answer


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
    changes=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
)
def test_changed_bytes_decode_alike_or_fall_back(
    values: list[float], changes: list[tuple[int, int]]
) -> None:
    """Bytes of a compiled shape changed anywhere: the columnar result equals the library's
    (or the payload is no longer of the layout and the library decodes it)."""
    hosts = _pair()
    birth = [{"name": f"v{i}", "alias": i + 1, "datatype": T.DOUBLE} for i in range(4)]
    _feed(hosts, f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, birth, 1_700_000_000_000))
    topic = f"spBv1.0/{G}/NDATA/{N}"
    _feed(hosts, topic, _data(1, values))
    _feed(hosts, topic, _data(2, values))
    assert hosts[0].columnar == 1
    raw = bytearray(_data(3, values))
    for pos, byte in changes:
        raw[pos % len(raw)] = byte
    _feed(hosts, topic, bytes(raw))
    _feed(hosts, topic, _data(4, values))


def _data(seq: int, values: list[float]) -> bytes:
    """Three doubles by alias, a null metric and a bdSeq metric, all with varint fields."""
    metrics: list[dict[str, Any]] = [
        {"alias": i + 1, "timestamp": 1_700_000_000_123, "double_value": v}
        for i, v in enumerate(values)
    ]
    metrics.append({"alias": 4, "timestamp": 1_700_000_000_124, "is_null": True})
    metrics.append({"name": "bdSeq", "long_value": 300})
    return _payload(seq, metrics, 1_700_000_000_100)


def test_a_broken_varint_in_a_metric_that_yields_no_reading_falls_back() -> None:
    """The timestamp of a null metric, or the value of a bdSeq metric, ending a byte early:
    the library then parses the payload differently, so the layout must not match."""
    hosts = _pair()
    birth = [{"name": f"v{i}", "alias": i + 1, "datatype": T.DOUBLE} for i in range(4)]
    _feed(hosts, f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, birth, 1_700_000_000_000))
    topic = f"spBv1.0/{G}/NDATA/{N}"
    for seq in (1, 2):
        _feed(hosts, topic, _data(seq, [1.0, 2.0, 3.0]))
    good = _data(3, [1.0, 2.0, 3.0])
    null_ts = good.index(bytes([0x18]) + _varint(1_700_000_000_124)) + 1
    long_at = good.index(bytes([0x58]) + _varint(300)) + 1
    for at in (null_ts, long_at):
        raw = bytearray(good)
        raw[at] &= 0x7F  # the varint ends here now
        columnar = hosts[0].columnar
        _feed(hosts, topic, bytes(raw))
        assert hosts[0].columnar == columnar


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _steady(metrics: list[dict[str, Any]], birth: list[dict[str, Any]], n: int = 5) -> Any:
    hosts = _pair()
    _feed(hosts, f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, birth, 1_700_000_000_000))
    topic = f"spBv1.0/{G}/NDATA/{N}"
    return hosts[0], [_feed(hosts, topic, _payload(seq, metrics, None)) for seq in range(1, n + 1)]


def test_steady_stream_is_decoded_as_columns_after_the_first_message() -> None:
    """The first DATA of a shape goes through the library, the next ones are columnar:
    nulls, metrics without a value, bdSeq, two's-complement ints and a missing payload
    timestamp included."""
    birth = [
        {"name": "t", "alias": 1, "datatype": T.DOUBLE},
        {"name": "i", "alias": 2, "datatype": T.INT16},
        {"name": "q", "alias": 3, "datatype": T.DOUBLE},
        {"name": "e", "alias": 4, "datatype": T.DOUBLE},
        {"name": "b", "alias": 5, "datatype": T.BOOLEAN},
    ]
    metrics: list[dict[str, Any]] = [
        {"alias": 1, "timestamp": 1_700_000_000_500, "double_value": 20.5},
        {"alias": 2, "int_value": 0xFFFE},
        {"alias": 3, "is_null": True},
        {"alias": 4},
        {"name": "bdSeq", "long_value": 3},
        {"alias": 5, "boolean_value": True},
    ]
    host, got = _steady(metrics, birth)
    assert (host.by_library, host.columnar) == (1, 4)
    last = got[-1]
    assert last.rows == [
        ("press1.t", 1_700_000_000_500_000_000, 20.5),
        ("press1.i", NOW, -2.0),
        ("press1.b", NOW, 1.0),
    ]
    assert last.rejects == [
        ("press1.q", RejectReason.BAD_STATUS),
        ("press1.e", RejectReason.MALFORMED),
    ]


def test_a_gap_in_the_columnar_path_asks_for_a_rebirth() -> None:
    """The sequence check is the same on both paths: a gap asks once, then data continues."""
    birth = [{"name": "t", "alias": 1, "datatype": T.DOUBLE}]
    hosts = _pair()
    _feed(hosts, f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, birth, 1_700_000_000_000))
    topic = f"spBv1.0/{G}/NDATA/{N}"
    for seq in (1, 2):
        _feed(hosts, topic, _payload(seq, [{"alias": 1, "double_value": 1.0}], None))
    got = _feed(hosts, topic, _payload(7, [{"alias": 1, "double_value": 2.0}], None))
    assert hosts[0].columnar == 2
    assert got.rebirth == [(G, N)]
    assert got.values == [2.0]


def test_a_new_birth_drops_the_layouts() -> None:
    """An NBIRTH or DBIRTH that reassigns aliases: the next DATA maps to the new names."""
    hosts = _pair()
    topic = f"spBv1.0/{G}/NDATA/{N}"
    first = [{"name": "a", "alias": 1, "datatype": T.DOUBLE}]
    _feed(hosts, f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, first, 1))
    for seq in (1, 2):
        _feed(hosts, topic, _payload(seq, [{"alias": 1, "double_value": 1.0}], None))
    second = [{"name": "b", "alias": 1, "datatype": T.DOUBLE}]
    _feed(hosts, f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, second, 1))
    got = _feed(hosts, topic, _payload(1, [{"alias": 1, "double_value": 1.0}], None))
    assert list(got.sensors) == ["press1.b"]
    device = f"spBv1.0/{G}/DDATA/{N}/pump"
    _feed(hosts, f"spBv1.0/{G}/DBIRTH/{N}/pump", _payload(2, first, None))
    for seq in (3, 4):
        _feed(hosts, device, _payload(seq, [{"alias": 1, "double_value": 1.0}], None))
    _feed(hosts, f"spBv1.0/{G}/DBIRTH/{N}/pump", _payload(5, second, None))
    got = _feed(hosts, device, _payload(6, [{"alias": 1, "double_value": 1.0}], None))
    assert list(got.sensors) == ["press1.pump.b"]


@pytest.mark.parametrize(
    "raw",
    [
        _payload(1, [{"alias": 1, "string_value": "x"}], 5),  # not numeric
        bytes.fromhex("1a0161"),  # a payload field (3 = seq) with the wrong wire type
        _payload(1, [{"alias": 1}], 5) + bytes.fromhex("2000"),  # uuid/body: field 4
        bytes.fromhex("120410011002"),  # a metric with alias twice (the last wins)
        bytes.fromhex("12020a01"),  # a name running past its metric
        bytes.fromhex("12030a01ff"),  # a name that is not UTF-8
    ],
)
def test_shapes_the_layout_does_not_mirror_are_refused(raw: bytes) -> None:
    """What the wire scan does not mirror exactly is left to the library."""
    assert compile_layout(raw) is None


def test_varint_widths_are_checked() -> None:
    """A raw varint must have its continuation bits where its width says; values are 64-bit."""
    v = Varints()
    assert v.value(bytes([0x96, 0x01])) == 150
    assert v.value(bytes([0x16, 0x01])) is None  # ends early
    assert v.value(bytes([0x96, 0x81])) is None  # does not end
    assert v.value(bytes([0x87] + [0x80] * 8 + [0x04])) == 7  # 2^65 + 7 truncated
