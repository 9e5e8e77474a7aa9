"""The MQTT delivery ledger without a broker: the crash window between spool commit and PUBACK.

Deterministic: the spool commits a batch with its messages' (packet id,
digest) records, the process "dies" before the PUBACK (the spool is simply
closed), and a fresh :class:`MqttSource` built from the reopened spool sees
the broker's redelivery (``dup`` set). Those messages must be acknowledged
without being ingested again; anything else must be ingested.
"""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as paho

from gateway.config import MqttSourceConfig, SensorConfig, TopicRule
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.sources.mqtt import MqttSource, digest
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
