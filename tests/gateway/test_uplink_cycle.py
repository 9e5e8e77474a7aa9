"""The uplink cycle state machine and the batch-answer rules (no network)."""

from __future__ import annotations

import base64
import itertools
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.uplink import AckCheck, Answer, judge_answer
from gateway.uplink_cycle import TRANSITIONS, Backoff, CycleError, Event, Step, UplinkCycle
from tecc_contract.ack import Ack, Outcome, frame_digest, seal_ack

S, E = Step, Event
#: The protocol written out once by hand: (step, event) -> next step; the rest is illegal.
EXPECTED: dict[tuple[Step, Event], Step] = {
    (S.ATTEST, E.ATTESTED): S.DRAIN,
    (S.ATTEST, E.REFUSED): S.BACKOFF,
    (S.ATTEST, E.FAILED): S.BACKOFF,
    (S.DRAIN, E.SENT): S.DRAIN,
    (S.DRAIN, E.EMPTY): S.IDLE,
    (S.DRAIN, E.FAILED): S.BACKOFF,
    (S.DRAIN, E.EXPIRED): S.ATTEST,
    (S.IDLE, E.WOKEN): S.ATTEST,
    (S.IDLE, E.TIMED_OUT): S.DRAIN,
    (S.IDLE, E.EXPIRED): S.ATTEST,
    (S.BACKOFF, E.WAITED): S.ATTEST,
}


@pytest.mark.parametrize(("step", "event"), list(itertools.product(Step, Event)))
def test_every_transition(step: Step, event: Event) -> None:
    """Each pair moves to the expected step or raises a CycleError naming both."""
    c = UplinkCycle(reattest_s=300.0)
    c.step = step
    if (step, event) in EXPECTED:
        c.fire(event)
        assert c.step is EXPECTED[(step, event)]
    else:
        with pytest.raises(CycleError, match=f"{event.value!r} is not allowed.*{step.value!r}"):
            c.fire(event)
        assert c.step is step


def test_table_is_the_protocol() -> None:
    """The product table holds exactly the transitions written out above."""
    assert dict(TRANSITIONS) == EXPECTED


def _step(c: UplinkCycle) -> Step:
    return c.step  # a call, so mypy does not keep a narrowed step across events


def test_cycle_attests_drains_idles_and_reattests_when_due() -> None:
    """Nothing is sent before attestation; re-attestation after reattest_s or new work."""
    c = UplinkCycle(reattest_s=10.0)
    assert _step(c) is S.ATTEST
    c.attested(0.0)
    c.drained(3, 1.0)
    assert _step(c) is S.DRAIN
    c.drained(0, 2.0)
    assert _step(c) is S.IDLE
    c.timed_out(3.0)
    assert _step(c) is S.DRAIN
    c.drained(0, 11.0)  # idle again, then the interval passes after reattest_s
    c.timed_out(11.0)
    assert _step(c) is S.ATTEST
    c.attested(12.0)
    c.drained(0, 12.0)
    c.woken()
    assert _step(c) is S.ATTEST


def test_failures_back_off_exponentially_with_jitter_and_reset() -> None:
    """Delay = rand * min(max, min * 2^failures); a successful drain resets the count."""
    c = UplinkCycle(reattest_s=300.0, backoff=Backoff(min_s=0.5, max_s=4.0))
    delays = []
    for _ in range(5):
        delays.append(c.failed(0.5) if c.step is S.ATTEST else c.refused(0.5))
        assert (c.step, c.attested_at) == (S.BACKOFF, None)
        c.waited()
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0]
    c.attested(0.0)
    c.drained(1, 0.0)
    assert c.failures == 0


def test_a_delay_decided_by_the_endpoint_choice_replaces_the_backoff() -> None:
    """Several endpoints: after a failure the wait is the endpoint choice's (0 when another
    endpoint is free, a Retry-After when all are overloaded), not the cycle's own backoff."""
    c = UplinkCycle(reattest_s=300.0, backoff=Backoff(min_s=0.5, max_s=4.0))
    assert c.refused(0.5, 0.0) == 0.0  # another endpoint is free: attest it at once
    c.waited()
    assert c.failed(0.5, 7.0) == 7.0  # every endpoint asked to wait 7 s
    assert c.delay_s == 7.0
    c.waited()
    assert c.failed(0.5) == 2.0  # none given: the own backoff, min(4, 0.5 · 2^3) · 0.5


GW, CL, SEQ, FRAME = "gw-1", "party-0", 42, b"the exact frame bytes"


def _answer(ack: bytes) -> bytes:
    return json.dumps({"status": "accepted", "ack": base64.b64encode(ack).decode()}).encode()


def test_only_a_signed_ack_of_this_exact_frame_lets_it_go() -> None:
    """A forged, misaddressed, other-seq, other-digest or missing ack keeps the frame."""
    key = Ed25519PrivateKey.generate()
    check = AckCheck(gateway_id=GW, cluster_id=CL, key=key.public_key())

    def judge(status: int, body: bytes) -> Answer:
        return judge_answer(status, body, check=check, seq=SEQ, frame=FRAME)[0]

    good = Ack(GW, CL, SEQ, frame_digest(FRAME), Outcome.STORED)
    assert judge(200, _answer(seal_ack(good, key))) is Answer.ACKED
    dup = Ack(GW, CL, SEQ, frame_digest(FRAME), Outcome.DUPLICATE)
    assert judge(200, _answer(seal_ack(dup, key))) is Answer.ACKED
    bad = [
        seal_ack(good, Ed25519PrivateKey.generate()),
        seal_ack(Ack("gw-2", CL, SEQ, good.frame_digest, Outcome.STORED), key),
        seal_ack(Ack(GW, "party-1", SEQ, good.frame_digest, Outcome.STORED), key),
        seal_ack(Ack(GW, CL, SEQ + 1, good.frame_digest, Outcome.STORED), key),
        seal_ack(Ack(GW, CL, SEQ, frame_digest(FRAME + b"x"), Outcome.STORED), key),
    ]
    for raw in bad:
        assert judge(200, _answer(raw)) is Answer.BAD_ACK
    for body in (b"", b"duplicate", b"{}", b'{"ack": 1}', b'{"ack": "!!"}', b"[]"):
        assert judge(200, body) is Answer.BAD_ACK
        assert judge(201, body) is Answer.BAD_ACK
    assert judge(409, b'{"reason": "replay"}') is Answer.CONFLICT
    assert judge(409, b"duplicate") is Answer.REFUSED
    assert judge(409, _answer(seal_ack(good, key))) is Answer.REFUSED
    assert judge(503, b"") is Answer.REFUSED
    assert judge(400, _answer(seal_ack(good, key))) is Answer.REFUSED
