"""Verifier nonces: single use, expiring, bounded (pure)."""

from __future__ import annotations

import itertools

import pytest

from tecc_contract import tpm_evidence as ev


def _counter_random() -> ev.Challenges:
    counter = itertools.count()
    return ev.Challenges(ttl_ns=1_000, limit=3, random=lambda n: next(counter).to_bytes(n, "big"))


def test_a_nonce_is_used_once() -> None:
    cs = _counter_random()
    ch = cs.issue("gw", ev.ENROL_TAG, 0)
    assert cs.consume(ch.nonce, "gw", ev.ENROL_TAG, 10) == ch
    with pytest.raises(ev.EvidenceError, match="already used") as err:
        cs.consume(ch.nonce, "gw", ev.ENROL_TAG, 20)  # replayed
    assert err.value.reason == "nonce"


def test_a_stale_nonce_is_refused() -> None:
    cs = _counter_random()
    ch = cs.issue("gw", ev.REQUOTE_TAG, 0)
    with pytest.raises(ev.EvidenceError) as err:
        cs.consume(ch.nonce, "gw", ev.REQUOTE_TAG, 1_000)
    assert err.value.reason == "nonce"
    assert len(cs) == 0


def test_a_nonce_is_bound_to_its_gateway_and_purpose() -> None:
    cs = _counter_random()
    ch = cs.issue("gw", ev.REQUOTE_TAG, 0)
    for gw, purpose in (("other", ev.REQUOTE_TAG), ("gw", ev.ENROL_TAG)):
        with pytest.raises(ev.EvidenceError):
            cs.consume(ch.nonce, gw, purpose, 1)
    assert cs.consume(ch.nonce, "gw", ev.REQUOTE_TAG, 1).gateway_id == "gw"


def test_outstanding_nonces_are_bounded() -> None:
    cs = _counter_random()
    first = cs.issue("gw", ev.ENROL_TAG, 0)
    for i in range(10):
        cs.issue(f"gw{i}", ev.ENROL_TAG, 1)
    assert len(cs) == 3
    with pytest.raises(ev.EvidenceError):
        cs.consume(first.nonce, "gw", ev.ENROL_TAG, 2)


def test_pcr_digest_is_over_ascending_indices() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert ev.pcr_digest({14: b, 7: a}) == ev.pcr_digest({7: a, 14: b})
    assert ev.pcr_digest({7: b, 14: a}) != ev.pcr_digest({7: a, 14: b})
