"""Sans-IO MQTT delivery ledger: which QoS 1 messages a redelivery may repeat.

Everything that affects exactly-once spooling of MQTT messages lives here, in
the style of h11's ``_state.py``; :class:`~gateway.sources.mqtt.MqttSource`
only feeds paho's callbacks in as events (under one lock: paho's network
thread and the event loop both call in). The connection has an explicit
:class:`Link` state and one :data:`TRANSITIONS` table; a pair not in the
table raises :class:`LedgerError`.

Per packet id the ledger keeps the content digest of:

* ``pending``: offered to the pipeline, PUBACK not sent yet;
* ``resent``: pending when the connection dropped and the session resumed:
  the broker resends them, and their PUBACK (still to come) covers the copy;
* ``recent``: PUBACK sent in the last ``loss_window_s``: a connection that
  drops now may lose it;
* ``maybe_lost``: PUBACK sent while down, or shortly before a drop;
* ``durable``: spooled already (from the spool at start, or ``maybe_lost``
  at a resumed connection): a redelivery is acknowledged again, not ingested.

A redelivery (DUP set) whose digest matches ``resent`` or ``durable`` is not
ingested again. The broker resends in-flight messages first, so the first
message without DUP ends the replay: ``resent`` and ``durable`` are cleared.

Bounded: every table is keyed by the 16-bit packet id (1..65535, MQTT 5
§2.2.1), so none holds more than 65,535 entries whatever a broker sends; a
received packet id outside that range is refused (and never tracked).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final

MAX_PACKET_ID: Final = 65535


class Link(enum.Enum):
    """The broker connection as the ledger sees it."""

    DOWN = "down"  # not connected (start, or after a drop)
    REPLAYING = "replaying"  # session resumed: the broker is resending in-flight messages
    STEADY = "steady"  # connected; redeliveries are over


class Event(enum.Enum):
    """The inputs of the ledger."""

    CONNECT_RESUMED = "connect_resumed"  # CONNACK with session present
    CONNECT_NEW = "connect_new"  # CONNACK without a session (nothing will be resent)
    DISCONNECT = "disconnect"
    DUPLICATE = "duplicate"  # a message with DUP set
    FRESH = "fresh"  # a message without DUP
    PUBACK = "puback"  # PUBACKs queued for messages now durable


class Delivery(enum.Enum):
    """What the source does with a received message."""

    NEW = "new"  # ingest it
    IN_PIPELINE = "in_pipeline"  # a resend of a message still in the pipeline: drop it
    DURABLE = "durable"  # a resend of a spooled message: acknowledge again, drop it


TRANSITIONS: Final[Mapping[tuple[Link, Event], Link]] = {
    (Link.DOWN, Event.CONNECT_RESUMED): Link.REPLAYING,
    (Link.DOWN, Event.CONNECT_NEW): Link.STEADY,
    (Link.DOWN, Event.DISCONNECT): Link.DOWN,  # a refused CONNACK is followed by a disconnect
    (Link.DOWN, Event.PUBACK): Link.DOWN,
    (Link.REPLAYING, Event.DISCONNECT): Link.DOWN,
    (Link.REPLAYING, Event.DUPLICATE): Link.REPLAYING,
    (Link.REPLAYING, Event.FRESH): Link.STEADY,
    (Link.REPLAYING, Event.PUBACK): Link.REPLAYING,
    (Link.STEADY, Event.DISCONNECT): Link.DOWN,
    (Link.STEADY, Event.DUPLICATE): Link.STEADY,
    (Link.STEADY, Event.FRESH): Link.STEADY,
    (Link.STEADY, Event.PUBACK): Link.STEADY,
}


class LedgerError(Exception):
    """An event the delivery protocol does not allow now (a driver bug or a broken broker)."""


def _check_id(mid: int) -> None:
    if not 1 <= mid <= MAX_PACKET_ID:
        raise LedgerError(f"MQTT packet id {mid} is outside 1..{MAX_PACKET_ID}")


class DeliveryLedger:
    """The delivery state of one MQTT session; not thread-safe (the caller locks)."""

    def __init__(
        self, *, durable: Mapping[int, int] | None = None, loss_window_s: float = 5.0
    ) -> None:
        self.link = Link.DOWN
        self._loss_window_s = loss_window_s
        self.durable: dict[int, int] = {}
        for mid, dig in (durable or {}).items():
            _check_id(mid)
            self.durable[mid] = dig
        self.pending: dict[int, int] = {}
        self.resent: dict[int, int] = {}
        self.recent: OrderedDict[int, tuple[float, int]] = OrderedDict()
        self.maybe_lost: dict[int, int] = {}
        self.duplicates = 0

    def fire(self, event: Event) -> None:
        """Apply one event to the link state (the table); :class:`LedgerError` if illegal."""
        nxt = TRANSITIONS.get((self.link, event))
        if nxt is None:
            raise LedgerError(
                f"MQTT delivery ledger: event {event.value!r} is not allowed while the link "
                f"is {self.link.value!r}"
            )
        self.link = nxt

    def connected(self, *, session_present: bool) -> None:
        """CONNACK accepted."""
        self.fire(Event.CONNECT_RESUMED if session_present else Event.CONNECT_NEW)
        if session_present:
            # The broker resends what it did not see acknowledged: either still in
            # the pipeline (its PUBACK will follow) or acknowledged around the drop.
            self.resent = self.pending.copy()
            self.durable.update(self.maybe_lost)
        else:
            self.resent, self.durable = {}, {}
        self.maybe_lost = {}

    def disconnected(self) -> None:
        """The connection dropped: PUBACKs of the last moments may be lost."""
        self.fire(Event.DISCONNECT)
        for mid, (_, dig) in self.recent.items():
            self.maybe_lost[mid] = dig
        self.recent.clear()

    def received(self, mid: int, digest: int, *, dup: bool, qos: int) -> Delivery:
        """A PUBLISH arrived; say whether to ingest it (and track it if QoS > 0)."""
        if qos:
            _check_id(mid)
        self.fire(Event.DUPLICATE if dup else Event.FRESH)
        if dup:
            if self.resent.get(mid) == digest:
                del self.resent[mid]  # still in the pipeline; its PUBACK will follow
                self.duplicates += 1
                return Delivery.IN_PIPELINE
            if self.durable.get(mid) == digest:
                del self.durable[mid]  # spooled already; acknowledge again
                self.duplicates += 1
                return Delivery.DURABLE
        elif self.resent or self.durable:  # the broker resends in-flight messages first
            self.resent.clear()
            self.durable.clear()
        if qos:
            self.pending[mid] = digest
        return Delivery.NEW

    def acked(self, tokens: Iterable[tuple[int, int]], now_s: float) -> None:
        """PUBACKs for ``(packet id, digest)`` were queued (the messages are durable)."""
        self.fire(Event.PUBACK)
        up = self.link is not Link.DOWN
        for mid, dig in tokens:
            if not 1 <= mid <= MAX_PACKET_ID:
                continue  # never tracked: received() refused it (the PUBACK still goes out)
            self.pending.pop(mid, None)
            if up:
                self.recent.pop(mid, None)
                self.recent[mid] = (now_s, dig)
            else:  # paho drops queued packets when it reconnects
                self.maybe_lost[mid] = dig
        while self.recent:
            mid, (t, _) = next(iter(self.recent.items()))
            if now_s - t <= self._loss_window_s:
                break
            del self.recent[mid]

    def sizes(self) -> dict[str, int]:
        """Entries per table (each at most 65,535)."""
        return {
            "pending": len(self.pending),
            "resent": len(self.resent),
            "recent": len(self.recent),
            "maybe_lost": len(self.maybe_lost),
            "durable": len(self.durable),
        }
