"""Hypothesis runs of the ``ingest`` fuzz target (:mod:`fuzzing.ingest`)."""

from __future__ import annotations

import pytest
from hypothesis import given

from cloud_tecc.errors import IngestError
from fuzzing.ingest import _INGESTOR, TARGET
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_ingest_refuses_with_reasons_only(data: bytes) -> None:
    """Mutated or random frames are stored once or refused with an IngestError."""
    TARGET.check(data)


def test_party0_seeds_are_accepted_and_party1_frames_refused() -> None:
    """Seeds for party 0 store; frames for party 1 are refused as 'decrypt'."""
    for i, seed in enumerate(TARGET.seeds):
        if i % 2 == 0:
            _INGESTOR.prepare(seed, received_ns=1)
        else:
            with pytest.raises(IngestError, match="addressed to party 1"):
                _INGESTOR.prepare(seed, received_ns=1)
