"""Sparkplug B host logic (pure): births and aliases, sequence gaps, rebirths, deaths, values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sources.sparkplug import (
    REBIRTH_METRIC,
    UNATTRIBUTED,
    SparkplugHost,
    rebirth_request,
)
from tecc_contract.errors import RejectReason
from tecc_contract.sparkplug import Payload, SparkplugType

T = SparkplugType
NOW = 1_700_000_000_000_000_000  # ns
G, N = "plant", "press1"


def _payload(
    seq: int | None, metrics: list[dict[str, Any]], ts_ms: int | None = 1_700_000_000_000
) -> bytes:
    p = Payload()
    if ts_ms is not None:
        p.timestamp = ts_ms
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def _nbirth(host: SparkplugHost, bd: int = 0) -> Any:
    return host.receive(
        f"spBv1.0/{G}/NBIRTH/{N}",
        _payload(
            0,
            [
                {"name": "bdSeq", "datatype": T.INT64, "long_value": bd},
                {"name": "Node Control/Rebirth", "datatype": T.BOOLEAN, "boolean_value": False},
                {"name": "Oil/Temp", "alias": 1, "datatype": T.DOUBLE, "double_value": 41.5},
                {"name": "Speed", "alias": 2, "datatype": T.INT32, "int_value": 1200},
            ],
        ),
        NOW,
    )


def _dbirth(host: SparkplugHost, seq: int = 1) -> Any:
    return host.receive(
        f"spBv1.0/{G}/DBIRTH/{N}/pump",
        _payload(seq, [{"name": "Flow", "alias": 10, "datatype": T.FLOAT, "float_value": 2.5}]),
        NOW,
    )


def _ndata(host: SparkplugHost, seq: int, metrics: list[dict[str, Any]]) -> Any:
    return host.receive(f"spBv1.0/{G}/NDATA/{N}", _payload(seq, metrics), NOW)


def test_birth_learns_aliases_and_its_values_are_readings() -> None:
    """NBIRTH values are readings; bdSeq and Node Control metrics are not sensors."""
    host = SparkplugHost()
    r = _nbirth(host)
    assert sorted((s, v) for s, _, v in r.rows) == [
        ("press1.Oil.Temp", 41.5),
        ("press1.Speed", 1200.0),
    ]
    assert r.rebirth == []
    assert r.rejects == []
    assert {s for s, _, _ in r.rows} == r.live


def test_data_by_alias_with_metric_timestamps() -> None:
    """NDATA by alias maps back to the birth's names; a metric timestamp wins over the payload's."""
    host = SparkplugHost()
    _nbirth(host)
    r = _ndata(
        host,
        1,
        [
            {"alias": 1, "timestamp": 1_700_000_000_500, "double_value": 42.0},
            {"alias": 2, "int_value": 1300},
        ],
    )
    assert r.rows == [
        ("press1.Oil.Temp", 1_700_000_000_500_000_000, 42.0),
        ("press1.Speed", 1_700_000_000_000_000_000, 1300.0),
    ]
    assert r.rebirth == []


def test_device_birth_data_and_death() -> None:
    """DBIRTH adds device metrics; DDATA by alias; DDEATH makes only that device stale."""
    host = SparkplugHost()
    _nbirth(host)
    assert [s for s, _, _ in _dbirth(host).rows] == ["press1.pump.Flow"]
    r = host.receive(
        f"spBv1.0/{G}/DDATA/{N}/pump", _payload(2, [{"alias": 10, "float_value": 3.0}]), NOW
    )
    assert r.rows == [("press1.pump.Flow", 1_700_000_000_000_000_000, 3.0)]
    r = host.receive(f"spBv1.0/{G}/DDEATH/{N}/pump", _payload(3, []), NOW)
    assert r.stale == {"press1.pump.Flow"}
    assert host.stale == {"press1.pump.Flow"}


@pytest.mark.parametrize("seq", [2, 0, 200])
def test_sequence_gap_asks_for_one_rebirth_and_keeps_decoding(seq: int) -> None:
    """A gap asks for a rebirth (once within the hold-off) and the known aliases still decode."""
    host = SparkplugHost()
    _nbirth(host)
    r = _ndata(host, seq, [{"alias": 1, "double_value": 43.0}])
    assert r.rebirth == [(G, N)]
    assert [v for _, _, v in r.rows] == [43.0]
    again = _ndata(host, seq + 5, [{"alias": 1, "double_value": 44.0}])
    assert again.rebirth == []  # held off
    later = host.receive(f"spBv1.0/{G}/NDATA/{N}", _payload(seq + 9, []), NOW + 6_000_000_000)
    assert later.rebirth == [(G, N)]


def test_sequence_wraps_at_256_without_a_rebirth() -> None:
    """seq 255 is followed by 0 (§7.1), not a gap."""
    host = SparkplugHost()
    _nbirth(host)
    for s in range(1, 256):
        assert _ndata(host, s, []).rebirth == []
    assert _ndata(host, 0, []).rebirth == []
    assert _ndata(host, 1, []).rebirth == []


def test_unknown_alias_and_data_before_birth_ask_for_rebirth() -> None:
    """An alias the birth did not define, or DATA before any NBIRTH: counted, rebirth asked."""
    host = SparkplugHost()
    r = _ndata(host, 5, [{"alias": 1, "double_value": 1.0}])
    assert r.rebirth == [(G, N)]
    assert r.rejects == [(UNATTRIBUTED, RejectReason.UNKNOWN_SENSOR)]
    host2 = SparkplugHost()
    _nbirth(host2)
    r = _ndata(host2, 1, [{"alias": 99, "double_value": 1.0}])
    assert r.rebirth == [(G, N)]
    assert r.rows == []


def test_rebirth_recovers_after_a_gap() -> None:
    """After a gap and the requested NBIRTH, data flows again with no further request."""
    host = SparkplugHost()
    _nbirth(host)
    assert _ndata(host, 7, []).rebirth == [(G, N)]
    _nbirth(host)
    r = _ndata(host, 1, [{"alias": 2, "int_value": 5}])
    assert r.rebirth == []
    assert r.rows[0][2] == 5.0


def test_death_makes_node_and_devices_stale_and_a_stale_death_is_ignored() -> None:
    """NDEATH with the birth's bdSeq: everything stale; an older bdSeq's death changes nothing."""
    host = SparkplugHost()
    _nbirth(host, bd=4)
    _dbirth(host)
    old = host.receive(
        f"spBv1.0/{G}/NDEATH/{N}", _payload(None, [{"name": "bdSeq", "long_value": 3}]), NOW
    )
    assert old.stale == set()
    r = host.receive(
        f"spBv1.0/{G}/NDEATH/{N}", _payload(None, [{"name": "bdSeq", "long_value": 4}]), NOW
    )
    assert r.stale == {"press1.Oil.Temp", "press1.Speed", "press1.pump.Flow"}
    after = _ndata(host, 2, [{"alias": 1, "double_value": 1.0}])
    assert after.rebirth == [(G, N)]
    assert after.rows == []
    back = _nbirth(host, bd=5)
    assert "press1.Oil.Temp" in back.live
    assert "press1.Oil.Temp" not in host.stale


@pytest.mark.parametrize(
    ("datatype", "field", "raw", "want"),
    [
        (T.INT8, "int_value", 0xFF, -1.0),
        (T.INT16, "int_value", 0xFFFE, -2.0),
        (T.INT32, "int_value", 0xFFFFFFFD, -3.0),
        (T.INT64, "long_value", 0xFFFFFFFFFFFFFFFC, -4.0),
        (T.UINT32, "int_value", 0xFFFFFFFD, 4294967293.0),
        (T.UINT64, "long_value", 2**40, float(2**40)),
        (T.FLOAT, "float_value", 1.5, 1.5),
        (T.BOOLEAN, "boolean_value", True, 1.0),
        (T.DATETIME, "long_value", 1_700_000_000_000, 1.7e12),
    ],
)
def test_values_by_datatype(datatype: int, field: str, raw: object, want: float) -> None:
    """Signed ints come two's complement in int_value/long_value (§6.4.16)."""
    host = SparkplugHost()
    r = host.receive(
        f"spBv1.0/{G}/NBIRTH/{N}",
        _payload(0, [{"name": "x", "alias": 1, "datatype": datatype, field: raw}]),
        NOW,
    )
    assert r.rows[0][2] == want


def test_null_and_strings_are_counted_rejects() -> None:
    """is_null (bad quality) → bad_status; a string metric → not_numeric."""
    host = SparkplugHost()
    host.receive(
        f"spBv1.0/{G}/NBIRTH/{N}",
        _payload(
            0,
            [
                {"name": "a", "alias": 1, "datatype": T.DOUBLE, "double_value": 1.0},
                {"name": "s", "alias": 2, "datatype": T.STRING, "string_value": "ok"},
            ],
        ),
        NOW,
    )
    r = _ndata(host, 1, [{"alias": 1, "is_null": True}, {"alias": 2, "string_value": "x"}])
    assert r.rows == []
    assert r.rejects == [
        ("press1.a", RejectReason.BAD_STATUS),
        ("press1.s", RejectReason.NOT_NUMERIC),
    ]


@pytest.mark.parametrize(
    "topic",
    [
        "spBv1.0/plant/NDATA",
        "spAv1.0/plant/NDATA/n",
        "spBv1.0//NDATA/n",
        "spBv1.0/g/DDATA/n",
        "spBv1.0/g/NDATA/n/d",
    ],
)
def test_malformed_topics_are_counted_without_a_sensor_label(topic: str) -> None:
    """A topic that is not Sparkplug B (or mismatches its type) is one counted reject."""
    r = SparkplugHost().receive(topic, _payload(0, []), NOW)
    assert r.rejects == [(UNATTRIBUTED, RejectReason.MALFORMED)]
    assert r.rows == []


def test_undecodable_payload_is_counted_and_asks_for_rebirth() -> None:
    """Garbage bytes from a node: one malformed reject and a rebirth request, no exception."""
    host = SparkplugHost()
    _nbirth(host)
    r = host.receive(f"spBv1.0/{G}/NDATA/{N}", b"\xff\xff\xff\xff", NOW)
    assert r.rejects == [(UNATTRIBUTED, RejectReason.MALFORMED)]
    assert r.rebirth == [(G, N)]


def test_node_table_is_bounded() -> None:
    """Births beyond max_nodes are refused and counted: outside input cannot grow memory."""
    host = SparkplugHost(max_nodes=3)
    for i in range(10):
        host.receive(f"spBv1.0/{G}/NBIRTH/n{i}", _payload(0, []), NOW)
    assert host.node_count == 3


def test_device_table_is_bounded() -> None:
    """DBIRTHs of new devices beyond max_devices are refused and counted.

    Fails on the code before this change (metric-less DBIRTHs of fresh device
    names grew the node's device table without limit).
    """
    host = SparkplugHost(max_devices=3)
    host.receive(f"spBv1.0/{G}/NBIRTH/{N}", _payload(0, []), NOW)
    refused = []
    for i in range(10):
        r = host.receive(f"spBv1.0/{G}/DBIRTH/{N}/d{i}", _payload(i + 1, []), NOW)
        refused.append(bool(r.rejects))
    assert refused == [False] * 3 + [True] * 7
    again = host.receive(f"spBv1.0/{G}/DBIRTH/{N}/d0", _payload(11, []), NOW)
    assert not again.rejects  # a known device is reborn as usual


def test_rebirth_request_is_an_ncmd_with_the_rebirth_metric() -> None:
    """The request is NCMD on the node's topic with Node Control/Rebirth = true."""
    topic, raw = rebirth_request((G, N), 1_700_000_000_000)
    assert topic == f"spBv1.0/{G}/NCMD/{N}"
    p = Payload.FromString(raw)
    assert [(m.name, m.boolean_value) for m in p.metrics] == [(REBIRTH_METRIC, True)]


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(
        [f"spBv1.0/{G}/NDATA/{N}", f"spBv1.0/{G}/NBIRTH/{N}", f"spBv1.0/{G}/DDATA/{N}/d"]
    ),
    payload=st.binary(max_size=300),
)
def test_fuzz_any_bytes_never_raise(topic: str, payload: bytes) -> None:
    """Arbitrary payload bytes never raise and never yield a non-finite-checked crash."""
    host = SparkplugHost()
    _nbirth(host)
    r = host.receive(topic, payload, NOW)
    assert all(isinstance(v, float) for _, _, v in r.rows)


@pytest.mark.parametrize("kind", ["NBIRTH", "NDATA"])
def test_a_metric_name_that_is_not_utf8_is_a_malformed_reject(kind: str) -> None:
    """protobuf hands a non-UTF-8 string over as bytes: one malformed reject, no exception,
    the other metrics still decode (fails on the code before this change: TypeError)."""
    host = SparkplugHost()
    _nbirth(host)
    good = _payload(1, [{"alias": 1, "double_value": 7.0}], 1_700_000_000_000)
    bad_metric = bytes.fromhex("1204") + bytes.fromhex("0a02") + b"\x80x"  # name b"\x80x"
    r = host.receive(f"spBv1.0/{G}/{kind}/{N}", good + bad_metric, NOW)
    assert (UNATTRIBUTED, RejectReason.MALFORMED) in r.rejects
    assert [v for _, _, v in r.rows] == ([] if kind == "NBIRTH" else [7.0])
