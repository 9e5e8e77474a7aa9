"""Hypothesis runs of the ``mpc_messages`` fuzz target (:mod:`fuzzing.mpc_messages`)."""

from __future__ import annotations

from hypothesis import given

from cloud_tecc.mpc import bundle_wire
from fuzzing.mpc_messages import TARGET
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_peer_messages_raise_only_engine_or_peer_errors(data: bytes) -> None:
    """Mutated peer, dealer, handshake and service messages: parsed or refused cleanly."""
    TARGET.check(data)


def test_valid_messages_parse() -> None:
    """The round payload and the service message seeds are accepted as they are."""
    assert TARGET.check(TARGET.seeds[0]) is False
    assert TARGET.check(TARGET.seeds[-1]) is False
    assert bundle_wire.decode_batch(TARGET.seeds[1][1:], party=0)[0] == 7
