"""Sans-IO endpoint choice of one cluster link: which ingest endpoint gets the next request.

A cluster may list several ingest endpoints (``urls:``, the stateless
frontends of one party). The link sends to one *current* endpoint and stays
on it while it answers. When it fails the link moves on, round robin, to the
next endpoint that is not held back:

* a connection error, a timeout, a 5xx or an answer without a valid signed
  acknowledgement: :meth:`Endpoints.failed` holds that endpoint back for an
  exponential, fully jittered backoff of its own consecutive failures;
* ``503`` or ``429`` with ``Retry-After`` (an overloaded party):
  :meth:`Endpoints.overloaded` holds it back exactly that long, capped at
  ``max_retry_after_s`` (a hostile or broken header cannot park an
  endpoint for a day);
* an endpoint whose attestation or TLS key is refused: :meth:`Endpoints.refused`
  (backoff, like a failure, counted apart).

When every endpoint is held back, :meth:`Endpoints.wait_s` says how long
until the first is free again. Nothing here touches the spool: a frame
stays in it until the signed acknowledgement of that exact frame arrives,
whichever endpoint finally delivers it. With one endpoint the delays are
those of the single-URL link (:class:`~gateway.uplink_cycle.Backoff`).

The cluster-wide TLS pin (:class:`SpkiPin`) is kept here too: all frontends
of a party present the party's enclave TLS key, so an endpoint presenting
another key, while the cluster's key is confirmed by a recent attestation,
is refused; the others go on.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass

from gateway.uplink_cycle import Backoff

#: The longest ``Retry-After`` honoured, in seconds (longer values are capped).
MAX_RETRY_AFTER_S = 60.0


def retry_after_s(
    value: str | None, now_s: float, cap_s: float = MAX_RETRY_AFTER_S
) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait, in ``[0, cap_s]``; None if absent or bad.

    RFC 9110 §10.2.3: delay-seconds or an HTTP-date (``now_s`` is the Unix
    time the date is measured from).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), cap_s)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delay = when.timestamp() - now_s
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), cap_s)


@dataclass(slots=True)
class Endpoint:
    """One ingest endpoint and why it is held back (monotonic seconds)."""

    url: str
    failures: int = 0
    not_before: float = 0.0
    up: bool = False  # the last exchange with it succeeded
    why: str = ""  # "", "failed", "overloaded" or "refused": the last hold-back


class Endpoints:
    """The ingest endpoints of one cluster and which one is current (pure; times passed in)."""

    def __init__(
        self,
        urls: tuple[str, ...],
        *,
        backoff: Backoff | None = None,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
    ) -> None:
        if not urls:
            raise ValueError("a cluster needs at least one ingest endpoint (url or urls)")
        self.all = tuple(Endpoint(u) for u in urls)
        self.current = 0
        #: Moves from one endpoint to another after a failure, overload or refusal.
        self.failovers = 0
        self._backoff = backoff or Backoff()
        self._cap = max_retry_after_s

    @property
    def url(self) -> str:
        """The current endpoint's base URL."""
        return self.all[self.current].url

    def choose(self, now_s: float) -> int | None:
        """The endpoint to use now (it becomes current), or None while all are held back.

        The current endpoint while it is free; else the next free one after it,
        round robin (a move counted in :attr:`failovers`).
        """
        n = len(self.all)
        for k in range(n):
            i = (self.current + k) % n
            if self.all[i].not_before <= now_s:
                if i != self.current:
                    self.failovers += 1
                    self.current = i
                return i
        return None

    def wait_s(self, now_s: float) -> float:
        """Seconds until some endpoint is free again (0 if one is free now)."""
        return max(0.0, min(e.not_before for e in self.all) - now_s)

    def attested(self, i: int) -> None:
        """Endpoint ``i``'s quote verified: it is up (its failures count on until a delivery)."""
        e = self.all[i]
        e.up, e.why = True, ""

    def succeeded(self, i: int) -> None:
        """Endpoint ``i`` completed a drain round: its failures are forgiven."""
        e = self.all[i]
        e.failures, e.not_before, e.up, e.why = 0, 0.0, True, ""

    def failed(self, i: int, now_s: float, rand: float) -> float:
        """Endpoint ``i`` failed (transport, 5xx, no valid ack); return its hold-back in s."""
        return self._hold(i, now_s, rand, "failed")

    def refused(self, i: int, now_s: float, rand: float) -> float:
        """Endpoint ``i``'s quote or TLS key was refused; return its hold-back in s."""
        return self._hold(i, now_s, rand, "refused")

    def overloaded(self, i: int, now_s: float, retry_after: float) -> float:
        """Endpoint ``i`` answered 503/429 with ``Retry-After``; hold it back that long (capped)."""
        e = self.all[i]
        delay = min(max(retry_after, 0.0), self._cap)
        e.not_before, e.up, e.why = now_s + delay, False, "overloaded"
        return delay

    def _hold(self, i: int, now_s: float, rand: float, why: str) -> float:
        e = self.all[i]
        e.failures += 1
        delay = self._backoff.delay(e.failures, rand)
        e.not_before, e.up, e.why = now_s + delay, False, why
        return delay


@dataclass(slots=True)
class SpkiPin:
    """The cluster's attested TLS key (SHA-256 of its SPKI, hex), shared by all its endpoints.

    :meth:`allows` judges the key a verified quote binds on one endpoint (its
    certificate already checked against that quote); :meth:`confirm` records
    it once the endpoint passed every check. The first key is
    pinned; the same key again confirms it. Another key is refused while the
    pinned one was confirmed within ``hold_s`` (one of the party's endpoints
    presents another key than the others: a misconfigured or foreign
    frontend). Once no endpoint has confirmed the pinned key for ``hold_s``,
    or when the cluster has a single endpoint (the key has no other
    witness), the new key replaces it: a party that rotated its TLS key is
    followed, as with one URL.
    """

    hold_s: float
    spki: str | None = None
    confirmed_at: float = -math.inf

    def allows(self, spki: str, now_s: float, *, endpoints: int) -> bool:
        """Whether ``spki`` may be the cluster's key now; False: refuse that endpoint."""
        return (
            self.spki is None
            or spki == self.spki
            or endpoints <= 1
            or now_s - self.confirmed_at > self.hold_s
        )

    def confirm(self, spki: str, now_s: float) -> None:
        """An endpoint passed every check under ``spki``: it is (again) the cluster's key."""
        self.spki, self.confirmed_at = spki, now_s
