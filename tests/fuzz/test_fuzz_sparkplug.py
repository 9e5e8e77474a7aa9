"""Hypothesis runs of the ``sparkplug`` fuzz target (:mod:`fuzzing.sparkplug`)."""

from __future__ import annotations

from hypothesis import given

from fuzzing.sparkplug import _BIRTH, _NOW, _SEEDS, _TS, TARGET, _payload
from gateway.sources.sparkplug import SparkplugHost
from tests.fuzz.harness import FUZZ_SETTINGS, cases


@FUZZ_SETTINGS
@given(cases(TARGET))
def test_sparkplug_data_decodes_alike_on_both_paths(data: bytes) -> None:
    """Any NDATA payload: the columnar and the library path agree, nothing raises."""
    TARGET.check(data)


def test_seed_shapes_are_decoded_as_columns() -> None:
    """Each seed, sent again, is decoded from its compiled layout (the fuzzer reaches that path)."""
    host = SparkplugHost()
    for k, seed in enumerate(_SEEDS):
        host.receive(f"spBv1.0/g/NBIRTH/n{k}", _payload(0, _BIRTH, _TS), _NOW)
        host.receive(f"spBv1.0/g/NDATA/n{k}", seed, _NOW)
        before = host.columnar
        again = seed.replace(b"\x18\x02", b"\x18\x03")  # seq 2 -> 3
        got = host.receive(f"spBv1.0/g/NDATA/n{k}", again, _NOW)
        assert host.columnar == before + 1
        assert got.rebirth == []
