"""The MQTT delivery ledger without a broker: the crash window between spool commit and PUBACK.

Deterministic: the spool commits a batch with its messages' (packet id,
digest) records, the process "dies" before the PUBACK (the spool is simply
closed), and a fresh :class:`MqttSource` built from the reopened spool sees
the broker's redelivery (``dup`` set). Those messages must be acknowledged
without being ingested again; anything else must be ingested.
"""

from __future__ import annotations

import logging
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.config import MqttSourceConfig, PayloadFormat, SensorConfig, TopicRule
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.sources import mqtt as mqtt_module
from gateway.sources.mqtt import MqttSource, digest
from gateway.sources.payload import MAX_PAYLOAD_BYTES
from gateway.spool import Spool, pack_tokens
from tecc_contract.fixedpoint import SensorRange

TOPIC = b"plant/temp/value"


def _cfg(rules: tuple[TopicRule, ...]) -> MqttSourceConfig:
    return MqttSourceConfig(
        "mq", "127.0.0.1", 1883, "gw-ledger", rules, None, None, None, 3600, 30, None
    )


NUMBER = TopicRule("plant/+/value", "{0}", PayloadFormat.NUMBER, ("value",), None)
CFG = _cfg((NUMBER,))


def _msg(mid: int, payload: bytes, *, dup: bool) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=mid, topic=TOPIC)
    msg.payload = payload
    msg.qos = 1
    msg.dup = dup
    return msg


def _source(redelivery: dict[int, int]) -> tuple[MqttSource, Ingest]:
    ingest = Ingest({"temp": SensorConfig("temp", SensorRange(0.0, 100.0), "degC")})
    source = MqttSource(CFG, ingest, Metrics(ingest), redelivery=redelivery)
    source._ledger.connected(session_present=True)  # as paho's on_connect would
    return source, ingest


def _crash_after_commit(path: Path, spooled: list[tuple[int, bytes]]) -> dict[int, int]:
    """Spool a batch covering ``spooled`` (no PUBACK sent), close, reopen: the records left."""
    spool = Spool(path, gateway_id="gw", n_clusters=2, spool_key=bytes(32), max_bytes=1 << 20)
    tokens = [(mid, digest(TOPIC, p)) for mid, p in spooled]
    spool.append(1, 1, len(spooled), [b"f0", b"f1"], inflight={"mq": pack_tokens(tokens)})
    spool.close()  # the crash: PUBACKs never left
    spool = Spool(path, gateway_id="gw", n_clusters=2, spool_key=bytes(32), max_bytes=1 << 20)
    try:
        return spool.inflight("mq")
    finally:
        spool.close()


def test_redelivery_after_crash_is_acked_not_ingested(tmp_path: Path) -> None:
    """Spooled messages resent with DUP are acknowledged once and ingested zero times.

    Fails if the redelivery records are not written with the batch or not consulted.
    """
    redelivery = _crash_after_commit(tmp_path / "s.db", [(1, b"20.5"), (2, b"21.5")])
    assert redelivery == {1: digest(TOPIC, b"20.5"), 2: digest(TOPIC, b"21.5")}
    src, ingest = _source(redelivery)
    src._handle(_msg(1, b"20.5", dup=True))
    src._handle(_msg(2, b"21.5", dup=True))
    drained = ingest.drain()
    assert len(drained) == 0  # no reading twice
    assert [tok for _, tok in drained.acks] == [(1, redelivery[1]), (2, redelivery[2])]
    assert src.duplicates == 2
    src._handle(_msg(1, b"20.5", dup=True))  # a second redelivery is a new message now
    assert len(ingest.drain()) == 1


def test_only_identical_redeliveries_are_recognised(tmp_path: Path) -> None:
    """Same packet id with other content, or without DUP, is a new message and is ingested."""
    redelivery = _crash_after_commit(tmp_path / "s.db", [(1, b"20.5"), (2, b"21.5")])
    src, ingest = _source(redelivery)
    src._handle(_msg(1, b"99.0", dup=True))  # packet id reused for another payload
    d = ingest.drain()
    assert d.values == [99.0]
    assert src.duplicates == 0
    src._handle(_msg(3, b"22.5", dup=False))  # fresh traffic: the resend phase is over
    src._handle(_msg(2, b"21.5", dup=True))  # would have matched before
    d = ingest.drain()
    assert d.values == [22.5, 21.5]
    assert src.duplicates == 0


def _queued(src: MqttSource) -> bytes:
    return b"".join(bytes(p["packet"]) for p in src._client._out_packet)


def test_topic_that_is_not_utf8_is_rejected_and_acked() -> None:
    """A non-UTF-8 topic is counted as invalid_utf8 and its message still acknowledged."""
    src, ingest = _source({})
    msg = paho.MQTTMessage(mid=9, topic=b"plant/\xff/value")
    msg.payload, msg.qos = b"1.0", 1
    src._handle(msg)
    d = ingest.drain()
    assert len(d) == 0
    assert [tok[0] for _, tok in d.acks] == [9]
    assert sum(n for (_, reason), n in ingest.rejected.items() if reason == "invalid_utf8") == 1


def test_route_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishers choose topics: the route cache is cleared once it exceeds its bound."""
    monkeypatch.setattr(mqtt_module, "_ROUTE_CACHE", 3)
    declared = {f"t{i}": SensorConfig(f"t{i}", SensorRange(0.0, 100.0), "") for i in range(5)}
    ingest = Ingest(declared)  # only routes of declared sensors are cached
    src = MqttSource(CFG, ingest, Metrics(ingest))
    src._ledger.connected(session_present=True)
    sizes = []
    for i in range(5):
        msg = paho.MQTTMessage(mid=i + 1, topic=f"plant/t{i}/value".encode())
        msg.payload, msg.qos = b"1.0", 1
        src._handle(msg)
        sizes.append(len(src._routes))
    assert sizes == [1, 2, 3, 4, 1]  # cleared when a 5th topic finds 4 > 3 cached


def test_unmatched_topics_and_json_rules_take_the_right_path() -> None:
    """An unmatched topic is rejected and acked; a JSON rule never takes the number fast path."""
    rules = (
        TopicRule("plant/+/json", "{0}", PayloadFormat.JSON, ("v",), None),
        NUMBER,
    )
    cfg = _cfg(rules)
    ingest = Ingest({"temp": SensorConfig("temp", SensorRange(0.0, 100.0), "degC")})
    src = MqttSource(cfg, ingest, Metrics(ingest))
    src._ledger.connected(session_present=True)
    for mid, topic, payload in (
        (1, b"elsewhere/temp", b"1.0"),
        (2, b"plant/temp/json", b'{"v": 2.5}'),
        (3, b"plant/temp/json", b"3.5"),  # a bare number is not this rule's JSON object
    ):
        msg = paho.MQTTMessage(mid=mid, topic=topic)
        msg.payload, msg.qos = payload, 1
        src._handle(msg)
    d = ingest.drain()
    assert d.values == [2.5]
    assert sorted(tok[0] for _, tok in d.acks) == [1, 2, 3]  # every message acknowledged
    assert ingest.rejected[("(unmatched)", "wrong_shape")] == 1


def test_oversized_number_is_refused_and_malformed_payloads_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A numeric payload over max_bytes never takes the fast path; malformed ones are logged
    once per minute per topic."""
    src, ingest = _source({})
    long_number = b"0" * MAX_PAYLOAD_BYTES + b"1.5"  # parses as 1.5, but is too large
    with caplog.at_level(logging.WARNING, logger="gateway.sources.mqtt"):
        for mid, payload in ((1, long_number), (2, b"not a number"), (3, b"12.0")):
            src._handle(_msg(mid, payload, dup=False))
    d = ingest.drain()
    assert d.values == [12.0]
    assert ingest.rejected[("temp", "too_large")] == 1
    warnings = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(warnings) == 1  # the second malformed payload on the topic is not logged
