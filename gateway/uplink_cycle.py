"""Sans-IO uplink cycle: when a cluster link attests, drains, idles and backs off.

Everything that decides the next step of a :class:`~gateway.uplink.ClusterLink`
lives here, in the style of h11's ``_state.py``: an explicit :class:`Step`,
the :class:`Event` inputs and one :data:`TRANSITIONS` table; a pair not in
the table raises :class:`CycleError`. The clock and the jitter are passed in,
so every path is deterministic in a test.

::

    ATTEST --attested--> DRAIN --empty--> IDLE --timed_out--> DRAIN
      ^                  |  ^ sent          |
      |                  |  +---------------+ (drain again while work is pending)
      +---- expired -----+                  |
      +---- woken / expired ----------------+
      +---- waited --- BACKOFF <-- refused / failed (from ATTEST or DRAIN)

* ``attested``: the quote verified, the HPKE key matches the pin.
* ``sent`` / ``empty``: a drain round delivered some / no frames (and the
  progress notice was acknowledged).
* ``woken``: new work after idling: prove identity again before sending.
* ``timed_out``: the idle interval passed (time for the next notice).
* ``expired``: ``reattest_s`` passed since the last attestation.
* ``refused`` / ``failed``: attestation failed / a transport error or an
  answer without a valid signed acknowledgement; the link backs off
  (exponential, full jitter) and attests again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


class Step(enum.Enum):
    """What the link does next."""

    ATTEST = "attest"
    DRAIN = "drain"
    IDLE = "idle"
    BACKOFF = "backoff"


class Event(enum.Enum):
    """The inputs of the cycle."""

    ATTESTED = "attested"
    REFUSED = "refused"
    FAILED = "failed"
    SENT = "sent"
    EMPTY = "empty"
    WOKEN = "woken"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"
    WAITED = "waited"


TRANSITIONS: Final[Mapping[tuple[Step, Event], Step]] = {
    (Step.ATTEST, Event.ATTESTED): Step.DRAIN,
    (Step.ATTEST, Event.REFUSED): Step.BACKOFF,
    (Step.ATTEST, Event.FAILED): Step.BACKOFF,
    (Step.DRAIN, Event.SENT): Step.DRAIN,
    (Step.DRAIN, Event.EMPTY): Step.IDLE,
    (Step.DRAIN, Event.FAILED): Step.BACKOFF,
    (Step.DRAIN, Event.EXPIRED): Step.ATTEST,
    (Step.IDLE, Event.WOKEN): Step.ATTEST,
    (Step.IDLE, Event.TIMED_OUT): Step.DRAIN,
    (Step.IDLE, Event.EXPIRED): Step.ATTEST,
    (Step.BACKOFF, Event.WAITED): Step.ATTEST,
}


class CycleError(Exception):
    """An event the uplink cycle does not allow in this step (a bug in the driver)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff with full jitter: ``rand * min(max_s, min_s * 2^failures)``."""

    min_s: float = 0.2
    max_s: float = 30.0

    def delay(self, failures: int, rand: float) -> float:
        """Seconds to wait after ``failures`` consecutive failures; ``rand`` in [0, 1)."""
        return min(self.max_s, self.min_s * 2.0 ** min(failures, 20)) * rand


class UplinkCycle:
    """The step of one cluster link; times are monotonic seconds passed in."""

    def __init__(self, *, reattest_s: float, backoff: Backoff | None = None) -> None:
        self.step = Step.ATTEST
        self.failures = 0
        self.attested_at: float | None = None
        self.delay_s = 0.0
        self._reattest_s = reattest_s
        self._backoff = backoff or Backoff()
        self._stale = False  # attest again at the next chance (stale())

    def fire(self, event: Event) -> None:
        """Apply one event (the table); :class:`CycleError` if illegal here."""
        nxt = TRANSITIONS.get((self.step, event))
        if nxt is None:
            raise CycleError(
                f"uplink cycle: event {event.value!r} is not allowed in step {self.step.value!r}"
            )
        self.step = nxt

    def _expire(self, now_s: float) -> None:
        if self._stale or self.attested_at is None or now_s - self.attested_at > self._reattest_s:
            self.fire(Event.EXPIRED)

    def stale(self) -> None:
        """The last attestation no longer counts (a new release manifest is in force): the
        next drain round or idle interval ends in ``expired``."""
        self._stale = True

    def attested(self, now_s: float) -> None:
        """The cluster proved its identity and key."""
        self.fire(Event.ATTESTED)
        self.attested_at = now_s
        self._stale = False

    def drained(self, sent: int, now_s: float) -> None:
        """A drain round succeeded, delivering ``sent`` frames."""
        self.fire(Event.SENT if sent else Event.EMPTY)
        self.failures = 0
        if self.step is Step.DRAIN:
            self._expire(now_s)

    def woken(self) -> None:
        """New work arrived while idle."""
        self.fire(Event.WOKEN)

    def timed_out(self, now_s: float) -> None:
        """The idle interval passed without new work."""
        self.fire(Event.TIMED_OUT)
        self._expire(now_s)

    def refused(self, rand: float, delay_s: float | None = None) -> float:
        """Attestation failed; return the backoff delay in seconds.

        ``delay_s``: the wait decided elsewhere (the endpoint choice of a
        cluster with several endpoints, :mod:`gateway.uplink_endpoints`);
        None: this cycle's own exponential backoff.
        """
        return self._fail(Event.REFUSED, rand, delay_s)

    def failed(self, rand: float, delay_s: float | None = None) -> float:
        """A transport error or an unacknowledged frame; return the backoff delay."""
        return self._fail(Event.FAILED, rand, delay_s)

    def _fail(self, event: Event, rand: float, delay_s: float | None) -> float:
        self.fire(event)
        self.failures += 1
        self.attested_at = None
        self.delay_s = self._backoff.delay(self.failures, rand) if delay_s is None else delay_s
        return self.delay_s

    def waited(self) -> None:
        """The backoff delay passed."""
        self.fire(Event.WAITED)
