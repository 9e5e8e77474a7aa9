"""The MQTT delivery ledger: every (link, event) pair, and the redelivery rules."""

from __future__ import annotations

import itertools

import pytest

from gateway.sources.ledger import (
    MAX_PACKET_ID,
    TRANSITIONS,
    Delivery,
    DeliveryLedger,
    Event,
    LedgerError,
    Link,
)

L, E = Link, Event
#: The protocol written out once by hand: (link, event) -> next link; the rest is illegal.
EXPECTED: dict[tuple[Link, Event], Link] = {
    (L.DOWN, E.CONNECT_RESUMED): L.REPLAYING,
    (L.DOWN, E.CONNECT_NEW): L.STEADY,
    (L.DOWN, E.DISCONNECT): L.DOWN,
    (L.DOWN, E.PUBACK): L.DOWN,
    (L.REPLAYING, E.DISCONNECT): L.DOWN,
    (L.REPLAYING, E.DUPLICATE): L.REPLAYING,
    (L.REPLAYING, E.FRESH): L.STEADY,
    (L.REPLAYING, E.PUBACK): L.REPLAYING,
    (L.STEADY, E.DISCONNECT): L.DOWN,
    (L.STEADY, E.DUPLICATE): L.STEADY,
    (L.STEADY, E.FRESH): L.STEADY,
    (L.STEADY, E.PUBACK): L.STEADY,
}


@pytest.mark.parametrize(("link", "event"), list(itertools.product(Link, Event)))
def test_every_transition(link: Link, event: Event) -> None:
    """Each pair moves to the expected state or raises a LedgerError naming both."""
    ledger = DeliveryLedger()
    ledger.link = link
    if (link, event) in EXPECTED:
        ledger.fire(event)
        assert ledger.link is EXPECTED[(link, event)]
    else:
        with pytest.raises(LedgerError, match=f"{event.value!r} is not allowed.*{link.value!r}"):
            ledger.fire(event)
        assert ledger.link is link


def test_table_is_the_protocol() -> None:
    """The product table holds exactly the transitions written out above."""
    assert dict(TRANSITIONS) == EXPECTED


def test_a_message_while_down_is_refused() -> None:
    """paho delivers only on a connection; a message while DOWN is a protocol error."""
    with pytest.raises(LedgerError, match="'down'"):
        DeliveryLedger().received(1, 7, dup=False, qos=1)


def test_pending_message_resent_after_a_resumed_session_is_dropped() -> None:
    """In the pipeline at a drop: the resend is dropped, the coming PUBACK covers it."""
    led = DeliveryLedger()
    led.connected(session_present=False)
    assert led.received(5, 50, dup=False, qos=1) is Delivery.NEW
    led.disconnected()
    led.connected(session_present=True)
    assert led.link is L.REPLAYING
    assert led.received(5, 50, dup=True, qos=1) is Delivery.IN_PIPELINE
    assert led.received(5, 50, dup=True, qos=1) is Delivery.NEW  # matched once only
    assert led.duplicates == 1


def test_puback_lost_around_a_drop_is_reacknowledged() -> None:
    """PUBACK sent just before the drop (or while down): the resend is re-acknowledged."""
    led = DeliveryLedger(loss_window_s=5.0)
    led.connected(session_present=False)
    led.received(1, 10, dup=False, qos=1)
    led.received(2, 20, dup=False, qos=1)
    led.acked([(1, 10)], now_s=100.0)
    led.disconnected()
    led.acked([(2, 20)], now_s=101.0)  # while down: paho drops it on reconnect
    led.connected(session_present=True)
    assert led.received(1, 10, dup=True, qos=1) is Delivery.DURABLE
    assert led.received(2, 20, dup=True, qos=1) is Delivery.DURABLE
    assert led.received(3, 99, dup=True, qos=1) is Delivery.NEW  # unknown: ingest


def test_digest_mismatch_is_a_new_message() -> None:
    """A resend under a reused packet id with other content is ingested."""
    led = DeliveryLedger(durable={9: 90})
    led.connected(session_present=True)
    assert led.received(9, 91, dup=True, qos=1) is Delivery.NEW


def test_old_pubacks_age_out_of_the_loss_window() -> None:
    """A PUBACK older than the window is not suspected lost at a drop."""
    led = DeliveryLedger(loss_window_s=5.0)
    led.connected(session_present=False)
    led.acked([(1, 10)], now_s=0.0)
    led.acked([(2, 20)], now_s=10.0)
    assert list(led.recent) == [2]
    led.disconnected()
    assert led.maybe_lost == {2: 20}


def test_first_fresh_message_ends_the_replay() -> None:
    """The broker resends in-flight messages first: a non-DUP message clears the tables."""
    led = DeliveryLedger(durable={1: 10, 2: 20})
    led.connected(session_present=True)
    assert led.received(1, 10, dup=True, qos=1) is Delivery.DURABLE
    assert led.received(7, 70, dup=False, qos=1) is Delivery.NEW
    assert led.link is L.STEADY
    assert led.received(2, 20, dup=True, qos=1) is Delivery.NEW
    assert led.durable == {}


def test_clean_session_forgets_what_cannot_be_resent() -> None:
    """Without a session the broker resends nothing: candidates are dropped."""
    led = DeliveryLedger(durable={1: 10})
    led.connected(session_present=False)
    assert led.durable == {}
    assert led.received(1, 10, dup=True, qos=1) is Delivery.NEW


def test_tables_are_bounded_by_the_packet_id_space() -> None:
    """Every table is keyed by the 16-bit packet id; other ids are refused."""
    led = DeliveryLedger()
    led.connected(session_present=False)
    for round_ in range(2):
        for mid in range(1, MAX_PACKET_ID + 1):
            led.received(mid, round_, dup=False, qos=1)
    assert led.sizes()["pending"] == MAX_PACKET_ID
    led.acked([(mid, 1) for mid in range(1, MAX_PACKET_ID + 1)] * 2, now_s=0.0)
    assert led.sizes() == {
        "pending": 0,
        "resent": 0,
        "recent": MAX_PACKET_ID,
        "maybe_lost": 0,
        "durable": 0,
    }
    for bad in (0, MAX_PACKET_ID + 1):
        with pytest.raises(LedgerError, match=r"outside 1\.\.65535"):
            led.received(bad, 0, dup=False, qos=1)
    led.acked([(0, 0), (MAX_PACKET_ID + 1, 0)], now_s=1.0)  # refused ids: never tracked
    assert led.sizes()["recent"] == MAX_PACKET_ID
    with pytest.raises(LedgerError, match="outside"):
        DeliveryLedger(durable={70000: 1})
