"""The checked-in JSON test vectors still hold."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tecc_contract.envelope import reconstruct_batch
from tecc_contract.header import Column, decode_header
from tecc_contract.keys import KemSuite
from tecc_contract.scale import IDENTITY, Scale
from tests.contract.helpers import make_system
from tests.vectors.generate import PATH, build

VECTORS: dict[str, Any] = json.loads(PATH.read_text())


@pytest.mark.parametrize("part", ["fixed_point", "prg", "sharing", "header", "scale"])
def test_deterministic_vectors_match(part: str) -> None:
    """Codec, PRG, sharing and header bytes are exactly as recorded."""
    assert build()[part] == VECTORS[part]


def test_header_vector_decodes() -> None:
    """The recorded header bytes decode to the recorded batch."""
    h = decode_header(bytes.fromhex(VECTORS["header"]["hex"]))
    assert (h.gateway_id, h.seq, h.party, h.count) == ("gw-1", 7, 1, 3)
    assert (h.version, h.segments[0].scale) == (2, Scale.for_range(-40.0, 125.0, 12))


def test_version_1_header_decodes_with_the_identity_scale() -> None:
    """A header written before version 2 (frames still in a gateway's spool) still decodes."""
    h = decode_header(bytes.fromhex(VECTORS["header_v1"]["hex"]))
    assert (h.version, h.count, h.segments[0].scale) == (1, 3, IDENTITY)
    assert h.encode().hex() == VECTORS["header_v1"]["hex"]


@pytest.mark.parametrize("case", range(3))
def test_recorded_envelopes_open(case: int) -> None:
    """Recorded frames open with the recorded keys to the recorded shares."""
    vec = VECTORS["envelopes"][case]
    _, openers, _ = make_system(KemSuite(vec["suite"]), vec["n"])
    opened = [o.open(bytes.fromhex(f)) for o, f in zip(openers, vec["frames"], strict=True)]
    for op, expected in zip(opened, vec["party_shares"], strict=True):
        for col, words in expected.items():
            assert op.columns[Column(col)].tolist() == [int(w) for w in words]
    rec = reconstruct_batch(opened)
    for col, arr in rec.items():
        expected = [int(w) for w in vec["reconstructed"][col.value]]
        assert np.array_equal(arr, np.array(expected, dtype=np.uint64))
