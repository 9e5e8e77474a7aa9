"""The MQTT delivery ledger without a broker: the crash window between spool commit and PUBACK.

Deterministic: the spool commits a batch with its messages' (packet id,
digest) records, the process "dies" before the PUBACK (the spool is simply
closed), and a fresh :class:`MqttSource` built from the reopened spool sees
the broker's redelivery (``dup`` set). Those messages must be acknowledged
without being ingested again; anything else must be ingested.
"""

from __future__ import annotations

import logging
import time
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
CFG = MqttSourceConfig("mq", "127.0.0.1", 1883, "gw-ledger", (TopicRule("plant/+/value", "{0}"),))


def _msg(mid: int, payload: bytes, *, dup: bool) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=mid, topic=TOPIC)
    msg.payload = payload
    msg.qos = 1
    msg.dup = dup
    return msg


def _source(redelivery: dict[int, int]) -> tuple[MqttSource, Ingest]:
    ingest = Ingest({"temp": SensorConfig("temp", SensorRange(0.0, 100.0))})
    return MqttSource(CFG, ingest, Metrics(ingest), redelivery=redelivery), ingest


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


def test_unacked_messages_resent_after_reconnect_are_dropped_once(tmp_path: Path) -> None:
    """A message still in the pipeline at a reconnect is not ingested a second time."""
    src, ingest = _source({})
    src._handle(_msg(7, b"30.0", dup=False))
    assert ingest.drain().values == [30.0]
    src._resent = src._unacked.copy()  # what _on_connect does with session_present
    src._handle(_msg(7, b"30.0", dup=True))
    assert len(ingest.drain()) == 0
    assert src.duplicates == 1


class _Flags:
    def __init__(self, session_present: bool) -> None:
        self.session_present = session_present


class _Rc:
    is_failure = False


def _queued(src: MqttSource) -> bytes:
    return b"".join(bytes(p["packet"]) for p in src._client._out_packet)


def test_acks_are_one_buffer_of_pubacks_and_remembered_across_a_drop() -> None:
    """ack() queues exactly the PUBACK bytes; acks sent just before a drop are re-acked.

    The broker may never have received PUBACKs written shortly before the
    connection died; when it resends those messages (DUP) after the session
    resumes, they are acknowledged again without being ingested twice.
    """
    src, ingest = _source({})
    src.connected = True
    src.ack([])
    assert _queued(src) == b""
    src._handle(_msg(1, b"20.5", dup=False))
    src._handle(_msg(2, b"21.5", dup=False))
    tokens = [tok for _, tok in ingest.drain().acks]
    src.ack(tokens)
    assert _queued(src) == b"\x40\x02\x00\x01\x40\x02\x00\x02"  # MQTT 5 §3.4, one buffer
    assert src._unacked == {}
    src._on_disconnect(src._client, None, None, _Rc(), None)  # the PUBACKs may be lost
    src._on_connect(src._client, None, _Flags(session_present=True), _Rc(), None)
    src._handle(_msg(1, b"20.5", dup=True))
    src._handle(_msg(2, b"21.5", dup=True))
    again = ingest.drain()
    assert len(again) == 0
    assert [tok for _, tok in again.acks] == tokens
    assert src.duplicates == 2


def test_acks_while_disconnected_are_kept_for_the_resend() -> None:
    """PUBACKs queued while down are dropped by paho; the resent messages are re-acked."""
    src, ingest = _source({})
    src.connected = True
    src._handle(_msg(5, b"30.0", dup=False))
    tokens = [tok for _, tok in ingest.drain().acks]
    src._on_disconnect(src._client, None, None, _Rc(), None)
    src.ack(tokens)  # written while disconnected: lost on reconnect
    src._on_connect(src._client, None, _Flags(session_present=True), _Rc(), None)
    src._handle(_msg(5, b"30.0", dup=True))
    again = ingest.drain()
    assert (len(again), [tok for _, tok in again.acks]) == (0, tokens)


def test_old_acks_leave_the_loss_window_and_a_new_session_forgets() -> None:
    """Acks older than the loss window are not suspected; a fresh session clears everything."""
    src, ingest = _source({})
    src.connected = True
    src._handle(_msg(1, b"20.5", dup=False))
    tokens = [tok for _, tok in ingest.drain().acks]
    src.ack(tokens)
    src._recent[0] = (src._recent[0][0] - 60.0, src._recent[0][1])  # a minute ago
    src._handle(_msg(2, b"21.5", dup=False))
    src.ack([tok for _, tok in ingest.drain().acks])  # prunes entries older than the window
    assert [list(t) for _, t in src._recent] == [[2]]
    src._on_disconnect(src._client, None, None, _Rc(), None)
    src._on_connect(src._client, None, _Flags(session_present=True), _Rc(), None)
    src._handle(_msg(1, b"20.5", dup=True))  # acked long ago: a genuinely new delivery
    assert len(ingest.drain()) == 1


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
    src, _ = _source({})
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
        TopicRule("plant/+/json", "{0}", PayloadFormat.JSON, ("v",)),
        TopicRule("plant/+/value", "{0}"),
    )
    cfg = MqttSourceConfig("mq", "127.0.0.1", 1883, "gw-ledger", rules)
    ingest = Ingest({"temp": SensorConfig("temp", SensorRange(0.0, 100.0))})
    src = MqttSource(cfg, ingest, Metrics(ingest))
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


def test_fresh_traffic_ends_the_reconnect_resend_phase() -> None:
    """Once a non-DUP message arrives, an old in-pipeline id resent with DUP is new again."""
    src, ingest = _source({})
    src._handle(_msg(7, b"30.0", dup=False))
    ingest.drain()
    src._resent = src._unacked.copy()  # what _on_connect does with session_present
    src._handle(_msg(8, b"31.0", dup=False))  # the broker's resend phase is over
    src._handle(_msg(7, b"30.0", dup=True))
    assert ingest.drain().values == [31.0, 30.0]
    assert src.duplicates == 0


def test_reconnect_with_session_marks_the_pipeline_as_resent() -> None:
    """After a resumed session the in-pipeline message resent with DUP is not ingested again;
    the source reports itself connected since that moment."""
    src, ingest = _source({})
    src._handle(_msg(4, b"40.0", dup=False))
    ingest.drain()
    before = time.time_ns()
    src._on_connect(src._client, None, _Flags(session_present=True), _Rc(), None)
    assert src.connected
    assert src._up_ns is not None
    assert src._up_ns >= before
    src._handle(_msg(4, b"40.0", dup=True))
    assert len(ingest.drain()) == 0
    assert src.duplicates == 1
