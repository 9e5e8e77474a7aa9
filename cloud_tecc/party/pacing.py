"""Sans-IO pacing of the epoch loop: how long to wait before the next agreement round.

Every agreement round is three all-to-all control exchanges and a few store
queries (≈ 2 ms of CPU per worker), paid whether or not there is anything to
agree on. A party of K shard workers pays it K times, so with every round at
``tick_s`` the idle cost of a party grows with K at constant load
(docs/BENCHMARKS.md, ``bench.scale``). The loop therefore waits:

* ``tick_s`` after a round in which the leader proposed an epoch that was not
  agreed yet (a party still lacks batches or progress: something is pending);
* after a round in which the leader proposed nothing, twice as long as the
  last wait, up to ``idle_max_s`` (:data:`IDLE_MAX_S`, never below
  ``tick_s``) — but it wakes as soon as there is news (a gateway's progress
  moving forward or a gateway added: the inputs of the closing rule, see
  :class:`~cloud_tecc.party.epochs.ProgressTracker`; a batch alone never
  closes an epoch, as its gateway declares it delivered only afterwards) or a
  live gateway's liveness expires (the only change of the closing rule that
  nothing announces), and it waits at least ``tick_s`` between rounds, as
  before.

News resets the wait to ``tick_s``. A computed epoch is followed by the next
round at once (the loop does not wait at all). Every party of a shard gets the
same notices from the gateways, so they mostly wake together; a party that
had no news of its own (it saw the notice a round earlier) joins a peer's
round within ``tick_s``: the idle wait also ends once a peer's first message
of a round is queued (:class:`Incoming`, the MPC mesh), checked every
``tick_s`` — a loop wake-up, not a round.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable


@runtime_checkable
class Incoming(Protocol):
    """A mesh that tells whether a peer's message is waiting (a peer began a round)."""

    def has_incoming(self) -> bool:
        """True if a peer's message (or a lost link) is queued."""
        ...


#: The longest wait between two idle agreement rounds (seconds), unless ``tick_s`` is longer.
IDLE_MAX_S: Final = 1.0


class IdlePacer:
    """The wait before the next round (see the module docstring)."""

    def __init__(self, tick_s: float, idle_max_s: float = IDLE_MAX_S) -> None:
        self.tick_s = tick_s
        self.max_s = max(tick_s, idle_max_s)
        self.delay_s = tick_s

    def after_round(self, *, idle: bool) -> float:
        """The longest wait after a round that computed nothing; ``idle``: nothing proposed."""
        self.delay_s = min(self.max_s, self.delay_s * 2) if idle else self.tick_s
        return self.delay_s

    def news(self) -> None:
        """A notice moved progress: the next idle wait starts again from ``tick_s``."""
        self.delay_s = self.tick_s

    def wait_s(self, delay_s: float, *, now_ns: int, expiry_ns: int | None) -> float:
        """``delay_s`` cut to the next liveness expiry, but never below ``tick_s``."""
        if expiry_ns is not None:
            delay_s = min(delay_s, (expiry_ns - now_ns) / 1e9)
        return max(self.tick_s, delay_s)
