"""Sans-IO incident tracking: flags of one (gateway, sensor, detector) become one incident.

An engineer acts on incidents, not on one row per flagged reading. The
tracker is pure: :func:`step` takes an incident (or ``None``) and one event and
returns the new incident plus what changed; the collector feeds it as epochs
are reconstructed and the store persists the result. Nothing here knows a
detector's name: the rules are looked up per detector, with a default.

States and events (everything that moves the state lives in
:data:`TRANSITIONS`, one test row per entry):

- ``pending``: flags seen, never ``open_after`` of them within ``within_s`` (or,
  with ``of_readings`` = n > 0, never ``open_after`` = m among the last n
  readings the detector evaluated: "m of n") — not shown to anyone yet (debounce);
- ``open``: enough flags; ``end_ns`` follows the newest flag;
- ``acknowledged``: open, and an operator said they are on it;
- ``closed``: no flag for ``quiet_s`` of event time (data progress, not the
  wall clock, so a replay closes incidents the same way a live run does).

A gateway's **attestation incident** (detector :data:`ATTESTATION`, no
sensor) follows the clusters' enrolment states instead of flags
(:func:`on_attestation`): it opens at once when any cluster suspends the
gateway, and closes when none does any more (it attests again, is approved,
or is revoked). One per gateway, however many clusters suspend it.

An incident is one episode: flags of its key with no gap of ``quiet_s``; it
starts at the episode's first flag and counts all of them, also those seen
while it was pending. A flag after ``closed`` starts a new incident. A pending
incident that goes quiet is dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

SECOND: Final = 1_000_000_000
#: The detector name of a gateway's attestation incident (its sensor is "").
ATTESTATION: Final = "attestation"


class State(enum.StrEnum):
    """Lifecycle of an incident."""

    PENDING = "pending"
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class Event(enum.StrEnum):
    """What can happen to an incident."""

    FLAG = "flag"  # a flagged reading of the incident's key
    DEBOUNCED = "debounced"  # a flag that completes ``open_after`` within ``within_s``
    QUIET = "quiet"  # data progress passed the last flag by ``quiet_s``
    ACK = "ack"  # an operator acknowledged it
    SUSPENDED = "suspended"  # more clusters than before suspend the gateway (attestation)
    REINSTATED = "reinstated"  # no cluster suspends the gateway any more (attestation)


# (state, event) -> next state; ``None`` means the incident is dropped.
TRANSITIONS: Final[Mapping[tuple[State, Event], State | None]] = {
    (State.PENDING, Event.FLAG): State.PENDING,
    (State.PENDING, Event.DEBOUNCED): State.OPEN,
    (State.PENDING, Event.QUIET): None,
    (State.OPEN, Event.FLAG): State.OPEN,
    (State.OPEN, Event.QUIET): State.CLOSED,
    (State.OPEN, Event.ACK): State.ACKNOWLEDGED,
    (State.ACKNOWLEDGED, Event.FLAG): State.ACKNOWLEDGED,
    (State.ACKNOWLEDGED, Event.QUIET): State.CLOSED,
    (State.ACKNOWLEDGED, Event.ACK): State.ACKNOWLEDGED,
    (State.CLOSED, Event.ACK): State.CLOSED,
    (State.OPEN, Event.SUSPENDED): State.OPEN,
    (State.ACKNOWLEDGED, Event.SUSPENDED): State.ACKNOWLEDGED,
    (State.OPEN, Event.REINSTATED): State.CLOSED,
    (State.ACKNOWLEDGED, Event.REINSTATED): State.CLOSED,
}


class IncidentError(ValueError):
    """An event that the incident's state does not accept (e.g. acknowledging a pending one)."""


@dataclass(frozen=True, slots=True)
class Debounce:
    """Per-detector rule: open after ``open_after`` flags within ``within_s``; close after quiet.

    With ``of_readings`` = n > 0 the opening rule counts readings instead of
    time: open once ``open_after`` = m of the last n readings the detector
    evaluated were flagged (m of n), whatever the sample rate.
    """

    open_after: int = 1
    within_s: float = 60.0
    quiet_s: float = 30.0
    of_readings: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.open_after <= 1000:
            raise IncidentError("incidents.<detector>.open_after must be 1..1000")
        if self.of_readings and not self.open_after <= self.of_readings <= 100_000:
            raise IncidentError(
                "incidents.<detector>.of_readings must be 0 (time rule) or in "
                f"[open_after, 100000], e.g. of_readings: {max(10, 2 * self.open_after)}"
            )
        if not 0 < self.within_s <= 86_400 or not 0 < self.quiet_s <= 86_400:
            raise IncidentError("incidents.<detector>.within_s and quiet_s must be in (0, 86400]")


@dataclass(frozen=True, slots=True)
class Rules:
    """Debounce rules by detector name, with a default for detectors not listed."""

    default: Debounce = field(default_factory=Debounce)
    by_detector: Mapping[str, Debounce] = field(default_factory=dict)

    def of(self, detector: str) -> Debounce:
        """The rule for ``detector``."""
        return self.by_detector.get(detector, self.default)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """The released statistics of the window a flag fell in."""

    start_ns: int
    count: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident of one (gateway, sensor, detector); ``worst`` is its most-flagged window."""

    gateway: str
    sensor: str
    detector: str
    state: State
    start_ns: int
    end_ns: int
    flags: int
    recent_ns: tuple[int, ...] = ()  # newest flag times while pending (at most open_after)
    # m of n: positions of the newest flags while pending, in readings the detector
    # evaluated, relative to the end of the last epoch (so <= 0; at most open_after)
    recent_pos: tuple[int, ...] = ()
    worst: WindowStats | None = None
    worst_flags: int = 0
    acknowledged_by: str = ""
    acknowledged_ns: int | None = None
    id: int | None = None  # assigned by the store

    @property
    def key(self) -> tuple[str, str, str]:
        """(gateway, sensor, detector)."""
        return (self.gateway, self.sensor, self.detector)


def _move(inc: Incident, event: Event) -> State | None:
    try:
        return TRANSITIONS[(inc.state, event)]
    except KeyError:
        raise IncidentError(f"a {inc.state.value} incident does not accept {event.value}") from None


def on_flag(
    inc: Incident | None,
    *,
    key: tuple[str, str, str],
    ts_ns: int,
    window: WindowStats,
    window_flags: int,
    rule: Debounce,
    pos: int = 0,
) -> Incident:
    """Apply one flagged reading; returns the (possibly new) incident.

    ``pos`` is the reading's position among those the detector evaluated,
    relative to the end of the current epoch (the m-of-n rule's clock).
    ``window_flags`` is how many flags of this key fall in ``window`` so far;
    the incident's worst window is the one with the most. A flag of a closed
    incident's key (or with no incident) starts a new pending incident.
    """
    if inc is None or inc.state is State.CLOSED:
        gateway, sensor, detector = key
        inc = Incident(gateway, sensor, detector, State.PENDING, ts_ns, ts_ns, 0)
    worst, worst_flags = inc.worst, inc.worst_flags
    if window_flags > worst_flags or worst is None:
        worst, worst_flags = window, window_flags
    start = min(inc.start_ns, ts_ns)
    grown = replace(
        inc,
        start_ns=start,
        end_ns=max(inc.end_ns, ts_ns),
        flags=inc.flags + 1,
        worst=worst,
        worst_flags=worst_flags,
    )
    if grown.state is not State.PENDING:
        return replace(grown, state=_move(grown, Event.FLAG) or grown.state)
    if rule.of_readings:
        near = tuple(p for p in (*inc.recent_pos, pos) if p > pos - rule.of_readings)
        recent_pos = near[-rule.open_after :]
        if len(recent_pos) >= rule.open_after:
            state = _move(grown, Event.DEBOUNCED)
            return replace(grown, state=state or State.OPEN, recent_ns=(), recent_pos=())
        return replace(grown, recent_pos=recent_pos)
    horizon = ts_ns - int(rule.within_s * SECOND)
    recent = tuple(t for t in (*inc.recent_ns, ts_ns) if t >= horizon)[-rule.open_after :]
    if len(recent) >= rule.open_after:
        state = _move(grown, Event.DEBOUNCED)
        return replace(grown, state=state or State.OPEN, recent_ns=())
    return replace(grown, recent_ns=recent)


def shift_positions(inc: Incident, readings: int) -> Incident:
    """A new epoch in which the incident's detector evaluated ``readings`` more readings."""
    if not inc.recent_pos or not readings:
        return inc
    return replace(inc, recent_pos=tuple(p - readings for p in inc.recent_pos))


def on_progress(inc: Incident, through_ns: int, rule: Debounce) -> Incident | None:
    """Data is complete up to ``through_ns``: close (or drop, if pending) a quiet incident."""
    if inc.state is State.CLOSED or through_ns - inc.end_ns < int(rule.quiet_s * SECOND):
        return inc
    nxt = _move(inc, Event.QUIET)
    return None if nxt is None else replace(inc, state=nxt, recent_ns=(), recent_pos=())


def on_ack(inc: Incident, operator: str, now_ns: int) -> Incident:
    """An operator acknowledges; IncidentError for a pending incident (nobody saw it)."""
    nxt = _move(inc, Event.ACK)
    if nxt is None:  # pragma: no cover - no ACK transition drops an incident
        raise IncidentError("acknowledge dropped the incident")
    if inc.acknowledged_by:
        return inc  # the first acknowledgement stands
    return replace(inc, state=nxt, acknowledged_by=operator, acknowledged_ns=now_ns)


def on_attestation(
    inc: Incident | None, *, gateway: str, suspending: int, now_ns: int
) -> Incident | None:
    """The gateway's attestation incident after one look at every cluster; None if unchanged.

    ``suspending`` is how many clusters hold ``gateway`` suspended now. An
    incident opens (no debounce: a suspension is already a decision of a
    cluster) when the first does; ``flags`` is the most clusters that
    suspended it at once; it closes when none does. ``inc`` is the gateway's
    live attestation incident, or None.
    """
    if suspending > 0:
        if inc is None or inc.state is State.CLOSED:
            return Incident(gateway, "", ATTESTATION, State.OPEN, now_ns, now_ns, suspending)
        if suspending <= inc.flags:
            return None
        nxt = _move(inc, Event.SUSPENDED) or inc.state
        return replace(inc, state=nxt, flags=suspending, end_ns=now_ns)
    if inc is None or inc.state is State.CLOSED:
        return None
    return replace(inc, state=_move(inc, Event.REINSTATED) or State.CLOSED, end_ns=now_ns)


def attestation_changes(
    live: Mapping[str, Incident], suspending: Mapping[str, int], now_ns: int
) -> list[Incident]:
    """Every gateway's :func:`on_attestation` that changes, in gateway order.

    ``live`` is each gateway's live attestation incident, ``suspending`` how
    many clusters hold each gateway suspended now; a gateway in either is looked at.
    """
    out = []
    for gid in sorted(set(suspending) | set(live)):
        inc = on_attestation(
            live.get(gid), gateway=gid, suspending=suspending.get(gid, 0), now_ns=now_ns
        )
        if inc is not None:
            out.append(inc)
    return out
