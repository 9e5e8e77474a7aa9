"""Hypothesis runs of the ``progress`` fuzz target (:mod:`fuzzing.progress`)."""

from __future__ import annotations

from hypothesis import given

from fuzzing.progress import _KEYS, _SEEDS, TARGET
from tecc_contract.progress import (
    open_progress,
)
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_progress_bytes_raise_only_contract_errors(data: bytes) -> None:
    """Mutated or random notices: opened correctly or refused with a ContractError."""
    TARGET.check(data)


def test_seeds_open() -> None:
    """The unmutated seeds are valid notices (the harness is not fuzzing garbage only)."""
    clusters = [open_progress(s, _KEYS).cluster_id for s in _SEEDS[:3]]
    assert clusters == ["party0", "party1", "party2"]
    assert not any(TARGET.check(s) for s in _SEEDS)
