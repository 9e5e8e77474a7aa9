"""Hypothesis runs of the ``envelope`` fuzz target (:mod:`fuzzing.envelope`)."""

from __future__ import annotations

import pytest
from hypothesis import given

from fuzzing.envelope import _OPENERS, _SEEDS, TARGET, run
from tecc_contract.envelope import OpenedShare, read_header
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_envelope_bytes_raise_only_contract_errors(data: bytes) -> None:
    """Mutated or random frames: opened correctly or refused with a ContractError."""
    TARGET.check(data)


def test_seeds_open() -> None:
    """The unmutated seeds are valid frames (the harness is not fuzzing garbage only)."""
    for seed in _SEEDS:
        assert read_header(seed).count > 0
    assert not any(TARGET.check(s) for s in _SEEDS)


def test_tampered_frame_that_opens_is_a_finding() -> None:
    """The oracle itself: an edited frame that opened as sent would fail the target.

    Opening is simulated by an opener that accepts anything (the mutant "signature
    not checked"); the target must raise, not count it as refused or accepted.
    """
    edited = bytearray(_SEEDS[0])
    edited[20] ^= 1
    fake = _OPENERS[0].open(_SEEDS[0])

    class _AcceptAll:
        def open(self, frame: bytes) -> OpenedShare:
            return fake

    with pytest.raises(AssertionError, match="tampered"):
        run(bytes(edited), [_AcceptAll()])
    run(_SEEDS[0], [_AcceptAll()])
