"""Sans-IO epoch agreement between N >= 2 parties: one state machine per shard.

Everything that affects the agreement's state lives here, in the style of
h11's ``_state.py``: an explicit :class:`Phase`, the :class:`Event` inputs and
one :data:`TRANSITIONS` table ``(phase, event) -> phase``. Anything not in the
table is a protocol error that names whose fault it was
(:class:`LocalAgreementError`: this party's driver fed an event out of order;
:class:`RemoteAgreementError`: the peer's proposal breaks the protocol). No
I/O, no clock, no globals: the driver
(:class:`~cloud_tecc.party.coordinator.Coordinator`) exchanges the control
messages over the mesh and feeds what it learned in as events.

One round (a "tick")::

    WATERMARKS --watermarks--> PROPOSAL --proposal--> VERDICTS --agreed--> COMPUTING
        ^                          |                      |                    |
        +------ no_proposal -------+------- refused ------+---- committed -----+

Any phase --fault--> FAILED (the session ends); FAILED --restart--> WATERMARKS
(a new session starts from the durable state).

* ``watermarks``: every party's committed watermark is known (one all-to-all
  control round); the round continues from the common (lowest) one, every
  party ahead rewinds to it.
* ``proposal`` / ``no_proposal``: the leader's (party 0's) choice for the next
  epoch (or nothing closed yet), sent to every follower. A proposal must start
  at or after the common watermark.
* ``agreed`` / ``refused``: every party's verdict on the proposal, exchanged
  all-to-all, so every party holds the same N verdicts and takes the same
  decision: the epoch is computed only if all N confirm it (one refusal is
  enough to wait).
* ``committed``: the epoch, its stream states and its results are durable;
  the epoch's end must be the proposal's end.

The machine is keyed by ``shard`` and holds the epoch it is agreeing on, so
a process may run one machine per shard (the later JetStream deployment runs
agreement per shard in shard workers; nothing here assumes one process per
party).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from cloud_tecc.errors import PeerError
from cloud_tecc.party.epochs import Proposal


class Phase(enum.Enum):
    """Where one shard's agreement round stands."""

    WATERMARKS = "watermarks"  # exchanging committed watermarks
    PROPOSAL = "proposal"  # common watermark known; waiting for the leader's proposal
    VERDICTS = "verdicts"  # proposal known; waiting for both parties' verdicts
    COMPUTING = "computing"  # both confirmed; the secure program runs and commits
    FAILED = "failed"  # the session ended; only ``restart`` leaves this


class Event(enum.Enum):
    """The inputs of the agreement machine."""

    WATERMARKS = "watermarks"
    PROPOSAL = "proposal"
    NO_PROPOSAL = "no_proposal"
    AGREED = "agreed"
    REFUSED = "refused"
    COMMITTED = "committed"
    FAULT = "fault"
    RESTART = "restart"


TRANSITIONS: Final[Mapping[tuple[Phase, Event], Phase]] = {
    (Phase.WATERMARKS, Event.WATERMARKS): Phase.PROPOSAL,
    (Phase.PROPOSAL, Event.PROPOSAL): Phase.VERDICTS,
    (Phase.PROPOSAL, Event.NO_PROPOSAL): Phase.WATERMARKS,
    (Phase.VERDICTS, Event.AGREED): Phase.COMPUTING,
    (Phase.VERDICTS, Event.REFUSED): Phase.WATERMARKS,
    (Phase.COMPUTING, Event.COMMITTED): Phase.WATERMARKS,
    **{(p, Event.FAULT): Phase.FAILED for p in Phase if p is not Phase.FAILED},
    (Phase.FAILED, Event.RESTART): Phase.WATERMARKS,
}


class AgreementError(PeerError):
    """An event arrived that the agreement protocol does not allow in this phase."""


class LocalAgreementError(AgreementError):
    """This party's driver fed an event out of order (a bug here, not the peer's fault)."""


class RemoteAgreementError(AgreementError):
    """The peer's messages broke the agreement protocol."""


class EpochAgreement:
    """The agreement state of one shard between this party and its N - 1 peers."""

    def __init__(self, *, shard: str, party: int, n_parties: int = 2, leader: int = 0) -> None:
        if not (n_parties >= 2 and 0 <= party < n_parties and 0 <= leader < n_parties):
            raise LocalAgreementError(
                f"epoch agreement of shard {shard!r}: party {party} and leader {leader} must be "
                f"below n_parties {n_parties} (>= 2)"
            )
        self.shard = shard
        self.party = party
        self.n_parties = n_parties
        self.leader_index = leader
        self.leader = party == leader
        #: Every other party, in order (the peers whose messages each round needs).
        self.peers = tuple(p for p in range(n_parties) if p != party)
        #: The parties that refused the last refused proposal (for the log).
        self.refused_by: tuple[int, ...] = ()
        self.phase = Phase.WATERMARKS
        #: Common watermark of the current round (valid from PROPOSAL on).
        self.base_ns: int | None = None
        #: The epoch being agreed on (valid in VERDICTS and COMPUTING).
        self.proposal: Proposal | None = None

    def fire(self, event: Event) -> None:
        """Apply one event to the phase (the table); :class:`LocalAgreementError` if illegal."""
        nxt = TRANSITIONS.get((self.phase, event))
        if nxt is None:
            raise LocalAgreementError(
                f"epoch agreement of shard {self.shard!r}: event {event.value!r} is not allowed "
                f"in phase {self.phase.value!r}"
            )
        self.phase = nxt

    def _from_every_peer(self, what: str, theirs: Mapping[int, object]) -> None:
        if set(theirs) != set(self.peers):
            raise LocalAgreementError(
                f"epoch agreement of shard {self.shard!r}: {what} of parties {sorted(theirs)}, "
                f"need exactly the peers {list(self.peers)}"
            )

    def watermarks(self, mine: int, theirs: Mapping[int, int]) -> int:
        """Every peer's committed watermark is known; return the common (lowest) one."""
        self._from_every_peer("watermarks", theirs)
        self.fire(Event.WATERMARKS)
        self.base_ns = min(mine, *theirs.values())
        self.proposal = None
        return self.base_ns

    def proposed(self, proposal: Proposal | None) -> None:
        """The leader's proposal for this round (``None``: no closed epoch yet)."""
        if proposal is None:
            self.fire(Event.NO_PROPOSAL)
            return
        if self.phase is Phase.PROPOSAL and (
            self.base_ns is None
            or proposal.start_ns < self.base_ns
            or proposal.end_ns <= proposal.start_ns
        ):
            self.fire(Event.FAULT)
            raise RemoteAgreementError(
                f"epoch agreement of shard {self.shard!r}: proposed epoch "
                f"[{proposal.start_ns}, {proposal.end_ns}) is empty or starts before the "
                f"common watermark {self.base_ns}"
            )
        self.fire(Event.PROPOSAL)
        self.proposal = proposal

    def verdicts(self, *, mine: bool, theirs: Mapping[int, bool]) -> bool:
        """Every party's verdict on the proposal; True iff all N confirm it (then compute)."""
        self._from_every_peer("verdicts", theirs)
        every = {self.party: mine, **theirs}
        self.refused_by = tuple(sorted(p for p, ok in every.items() if not ok))
        agreed = not self.refused_by
        self.fire(Event.AGREED if agreed else Event.REFUSED)
        if not agreed:
            self.proposal = None
        return agreed

    def committed(self, end_ns: int) -> None:
        """The agreed epoch is committed up to ``end_ns``."""
        if self.phase is Phase.COMPUTING and (
            self.proposal is None or end_ns != self.proposal.end_ns
        ):
            raise LocalAgreementError(
                f"epoch agreement of shard {self.shard!r}: committed through {end_ns}, but the "
                f"agreed epoch ends at {None if self.proposal is None else self.proposal.end_ns}"
            )
        self.fire(Event.COMMITTED)
        self.base_ns, self.proposal = end_ns, None

    def fault(self) -> None:
        """The session failed (I/O, attestation, a peer error); nothing more this session."""
        self.fire(Event.FAULT)

    def restart(self) -> None:
        """A new session starts from the durable state (only after :meth:`fault`)."""
        self.fire(Event.RESTART)
        self.base_ns, self.proposal = None, None
