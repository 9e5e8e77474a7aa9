"""The epoch agreement state machine: every (phase, event) pair, legal or not."""

from __future__ import annotations

import itertools

import pytest

from cloud_tecc.party.agreement import (
    TRANSITIONS,
    EpochAgreement,
    Event,
    LocalAgreementError,
    Phase,
    RemoteAgreementError,
)
from cloud_tecc.party.epochs import Proposal

P, E = Phase, Event
#: The whole protocol, written out once by hand: (phase, event) -> next phase.
EXPECTED: dict[tuple[Phase, Event], Phase] = {
    (P.WATERMARKS, E.WATERMARKS): P.PROPOSAL,
    (P.WATERMARKS, E.FAULT): P.FAILED,
    (P.PROPOSAL, E.PROPOSAL): P.VERDICTS,
    (P.PROPOSAL, E.NO_PROPOSAL): P.WATERMARKS,
    (P.PROPOSAL, E.FAULT): P.FAILED,
    (P.VERDICTS, E.AGREED): P.COMPUTING,
    (P.VERDICTS, E.REFUSED): P.WATERMARKS,
    (P.VERDICTS, E.FAULT): P.FAILED,
    (P.COMPUTING, E.COMMITTED): P.WATERMARKS,
    (P.COMPUTING, E.FAULT): P.FAILED,
    (P.FAILED, E.RESTART): P.WATERMARKS,
}


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(Phase, Event)))
def test_every_transition(phase: Phase, event: Event) -> None:
    """Each pair either moves to the expected phase or is a protocol error that names it."""
    m = EpochAgreement(shard="s", party=0)
    m.phase = phase
    if (phase, event) in EXPECTED:
        m.fire(event)
        assert m.phase is EXPECTED[(phase, event)]
    else:
        with pytest.raises(LocalAgreementError, match=f"{event.value!r} is not allowed"):
            m.fire(event)
        assert m.phase is phase


def test_table_is_the_protocol() -> None:
    """The product table holds exactly the transitions written out above."""
    assert dict(TRANSITIONS) == EXPECTED


def _phase(m: EpochAgreement) -> Phase:
    """The phase, read afresh (a method call changes it behind the type checker's back)."""
    return m.phase


def _agreed(m: EpochAgreement, prop: Proposal) -> None:
    (peer,) = m.peers
    m.watermarks(10, {peer: 20})
    m.proposed(prop)
    assert m.verdicts(mine=True, theirs={peer: True})


def test_a_round_through_the_methods() -> None:
    """Watermarks -> proposal -> both agree -> commit, then the next round starts."""
    m = EpochAgreement(shard="s", party=1)
    assert not m.leader
    prop = Proposal(10, 20, (("gw", 1),))
    _agreed(m, prop)
    assert (m.phase, m.base_ns, m.proposal) == (P.COMPUTING, 10, prop)
    m.committed(20)
    assert (m.phase, m.base_ns, m.proposal) == (P.WATERMARKS, 20, None)


def test_one_refusal_is_enough() -> None:
    """Either party's refusal ends the round without computing."""
    for mine, theirs in ((True, False), (False, True), (False, False)):
        m = EpochAgreement(shard="s", party=0)
        m.watermarks(0, {1: 0})
        m.proposed(Proposal(0, 10, ()))
        assert not m.verdicts(mine=mine, theirs={1: theirs})
        assert m.phase is P.WATERMARKS


def test_a_proposal_before_the_common_watermark_is_the_peers_fault() -> None:
    """A proposal starting before the common watermark, or empty, fails the round."""
    for prop in (Proposal(5, 15, ()), Proposal(20, 20, ())):
        m = EpochAgreement(shard="s", party=1)
        m.watermarks(10, {0: 30})
        with pytest.raises(RemoteAgreementError, match="common watermark 10"):
            m.proposed(prop)
        assert m.phase is P.FAILED


def test_commit_must_end_the_agreed_epoch() -> None:
    """Committing another epoch's end is a local error and leaves the phase unchanged."""
    m = EpochAgreement(shard="s", party=0)
    _agreed(m, Proposal(10, 20, ()))
    with pytest.raises(LocalAgreementError, match="agreed epoch ends at 20"):
        m.committed(30)
    assert m.phase is P.COMPUTING


def test_shards_are_independent() -> None:
    """Two shards of one process keep separate state (no globals)."""
    a, b = EpochAgreement(shard="a", party=0), EpochAgreement(shard="b", party=0)
    _agreed(a, Proposal(10, 20, ()))
    assert b.phase is P.WATERMARKS
    b.fault()
    assert (a.phase, b.phase) == (P.COMPUTING, P.FAILED)
    with pytest.raises(LocalAgreementError, match="shard 'b'"):
        b.watermarks(0, {1: 0})
    b.restart()
    assert b.phase is P.WATERMARKS


@pytest.mark.parametrize("n", [3, 4])
def test_n_parties_common_watermark_is_the_lowest(n: int) -> None:
    """With N parties the round continues from the lowest of all N watermarks."""
    for me in range(n):
        m = EpochAgreement(shard="s", party=me, n_parties=n)
        assert m.peers == tuple(p for p in range(n) if p != me)
        assert m.leader is (me == 0)
        theirs = {p: 100 + 10 * p for p in m.peers}
        assert m.watermarks(100 + 10 * me, theirs) == 100
        assert m.phase is P.PROPOSAL


@pytest.mark.parametrize("n", [3, 4])
def test_n_parties_compute_only_if_all_confirm(n: int) -> None:
    """Every party takes the same decision from the same N verdicts; any one refusal waits."""
    for refuser in (None, *range(n)):
        decisions = []
        for me in range(n):
            m = EpochAgreement(shard="s", party=me, n_parties=n)
            m.watermarks(0, dict.fromkeys(m.peers, 0))
            m.proposed(Proposal(0, 10, ()))
            theirs = {p: p != refuser for p in m.peers}
            decisions.append(m.verdicts(mine=me != refuser, theirs=theirs))
            assert m.refused_by == (() if refuser is None else (refuser,))
            assert m.phase is (P.COMPUTING if refuser is None else P.WATERMARKS)
        assert decisions == [refuser is None] * n


def test_n_parties_need_every_peers_message() -> None:
    """Watermarks or verdicts of a wrong set of peers are a driver error, not a decision."""
    m = EpochAgreement(shard="s", party=1, n_parties=3)
    with pytest.raises(LocalAgreementError, match=r"need exactly the peers \[0, 2\]"):
        m.watermarks(0, {0: 0})
    assert m.phase is P.WATERMARKS
    m.watermarks(0, {0: 0, 2: 0})
    m.proposed(Proposal(0, 10, ()))
    with pytest.raises(LocalAgreementError, match="verdicts of parties"):
        m.verdicts(mine=True, theirs={0: True, 2: True, 3: True})
    assert _phase(m) is P.VERDICTS
    with pytest.raises(LocalAgreementError, match="below n_parties 3"):
        EpochAgreement(shard="s", party=3, n_parties=3)
