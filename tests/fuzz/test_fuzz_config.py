"""Hypothesis runs of the ``config`` fuzz target (:mod:`fuzzing.config`)."""

from __future__ import annotations

import pytest
from hypothesis import given

from fuzzing.config import _SEEDS, TARGET, _Refused, run
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_config_loaders_raise_only_config_errors(data: bytes) -> None:
    """Mutated YAML loads or is refused with the loader's own config error."""
    TARGET.check(data)


def test_shipped_configs_load() -> None:
    """Every seed loads unchanged."""
    assert [TARGET.check(s) for s in _SEEDS] == [False] * len(_SEEDS)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("gateway", b"state_dir: null\n"),
        ("gateway", b"\xff\xfe not utf-8"),
        ("party", b"\xff\xfe not utf-8"),
        ("party", b"role: party\nservice_id: p\nstate_dir: s\nparty: 0\nlisten: 5\n"),
        ("party", b"role: party\nservice_id: p\nstate_dir: s\nparty: {}\n"),
        ("dealer", b"role: dealer\nservice_id: d\nstate_dir: s\nparties: {}\ndepth: []\n"),
        ("output", b"role: output\nservice_id: o\nstate_dir: s\nparties: {x: 1}\n"),
        ("policy", b"window_s: [1]\n"),
    ],
)
def test_fuzz_findings_are_config_errors(name: str, text: bytes) -> None:
    """Inputs the fuzzer found crashing a loader now raise its config error."""
    with pytest.raises(_Refused):
        run(name.encode() + b"\n" + text)
