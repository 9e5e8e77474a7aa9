"""Hypothesis runs of the ``opcua_value`` fuzz target (:mod:`fuzzing.opcua_value`)."""

from __future__ import annotations

from hypothesis import given

from fuzzing.opcua_value import _SEEDS, TARGET
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_opcua_values_are_queued_or_counted(data: bytes) -> None:
    """Any decodable DataValue is queued as a valid float or counted, never an exception."""
    TARGET.check(data)


def test_seeds_convert() -> None:
    """Every seed decodes and runs through the conversion path."""
    accepted = sum(not TARGET.check(s) for s in _SEEDS)
    assert accepted == len(_SEEDS)
