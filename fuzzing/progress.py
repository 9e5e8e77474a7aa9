"""Fuzz the progress notice: parsing, signature check and freshness, as sent and re-signed."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fuzzing.harness import Target
from tecc_contract.errors import ContractError
from tecc_contract.progress import (
    SIG_BYTES,
    Progress,
    check_fresh,
    open_progress,
    seal_progress,
)

_GW = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz gateway").digest())
_KEYS = {"gw-1": _GW.public_key()}
_NOW = 1_800_000_000_000_000_000
_SEEDS = [
    seal_progress(Progress("gw-1", f"party{i}", _NOW - 10**9 * i, _NOW), _GW) for i in range(3)
] + [seal_progress(Progress("gw-1", "party0", 0, _NOW), _GW)]
_SEED_SET = frozenset(_SEEDS)


def run(data: bytes) -> None:
    """Open ``data`` as sent and re-signed; raise a ContractError if neither form opens.

    AssertionError (a finding) if ``data`` opened as sent without being a seed.
    """
    first: ContractError | None = None
    opened = 0
    resigned = data[:-SIG_BYTES] + _GW.sign(data[:-SIG_BYTES])
    for frame in (data, resigned):
        try:
            p = open_progress(frame, _KEYS)
            check_fresh(p, _NOW)
        except ContractError as exc:
            first = first or exc
            continue
        # As received, only an untouched seed may open: a tampered notice that still
        # verifies is a finding, not a pass.
        assert frame is resigned or frame in _SEED_SET, "a tampered notice opened"
        assert 0 <= p.through_ns <= p.sent_ns
        opened += 1
    if not opened and first is not None:
        raise first


TARGET = Target("progress", _SEEDS, run, (ContractError,))
