"""Hypothesis runs of the ``mqtt_payload`` fuzz target (:mod:`fuzzing.mqtt_payload`)."""

from __future__ import annotations

from hypothesis import given

from fuzzing.mqtt_payload import _NOW, _SEEDS, _SPECS, TARGET
from gateway.sources.payload import parse_payload
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_payload_mapping_never_raises(data: bytes) -> None:
    """Any payload yields validated readings or counted rejections, never an exception."""
    TARGET.check(data)


def test_seed_payloads_parse() -> None:
    """The seeds yield readings (the fuzzer starts from valid input)."""
    spec = _SPECS[-1]
    assert sum(len(parse_payload(s, spec, _NOW).readings) for s in _SEEDS) >= 10
