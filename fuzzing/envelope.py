"""Fuzz the envelope wire format: header decoding, signature check, HPKE open, expansion.

Every case is opened twice: as received (the signature check rejects almost
all mutations) and re-signed with the gateway's real key, so header parsing,
layout checks, HPKE and share expansion see the mutated bytes too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fuzzing.fixtures import make_system, regular_segment
from fuzzing.harness import Target
from tecc_contract.envelope import SIGNATURE_BYTES, OpenedShare, Opener, read_header
from tecc_contract.errors import ContractError
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite
from tecc_contract.scale import Scale


def _build() -> tuple[list[bytes], list[Opener], Ed25519PrivateKey]:
    seeds: list[bytes] = []
    # temp1 in a scale (header version 2 carries it per segment), press1 in the identity
    sealer, openers, gw = make_system(
        KemSuite.X25519,
        2,
        (Column.VALUE, Column.SQUARE, Column.HISTOGRAM),
        (0.0, 10.0, 20.0),
        scales={"temp1": Scale.for_range(-40.0, 125.0, 12)},
    )
    for seq in range(4):
        segs = [regular_segment("temp1", 3 + seq), regular_segment("press1", 1 + seq)]
        seeds += sealer.seal(seq, segs, created_ns=1_700_000_000_000_000_000)
    return seeds, openers, gw


_SEEDS, _OPENERS, _GW = _build()
_SEED_SET = frozenset(_SEEDS)


class _Opens(Protocol):
    def open(self, frame: bytes) -> OpenedShare: ...


def run(data: bytes, openers: Sequence[_Opens] = _OPENERS) -> None:
    """Parse ``data`` as a frame and open it as each party, as sent and re-signed.

    Raises a ContractError only if no party opened either form (the case was refused);
    an AssertionError (a finding) if ``data`` opened as sent without being a seed.
    """
    opened = 0
    first: ContractError | None = None
    try:
        read_header(data)
    except ContractError as exc:
        first = exc
    resigned = data[:-SIGNATURE_BYTES] + _GW.sign(data[:-SIGNATURE_BYTES])
    for frame in (data, resigned):
        for opener in openers:
            try:
                share = opener.open(frame)
            except ContractError as exc:
                first = first or exc
                continue
            # As received, only an untouched seed may open: a tampered frame that still
            # opens is a finding (the signature covers every byte), not a pass.
            assert frame is resigned or frame in _SEED_SET, "a tampered frame opened"
            opened += 1
            for arr in share.columns.values():
                assert arr.dtype == np.uint64
                assert arr.shape[0] == share.header.count
    if not opened and first is not None:
        raise first


TARGET = Target("envelope", _SEEDS, run, (ContractError,))
