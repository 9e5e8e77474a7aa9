"""Fuzz the batch ingest endpoint's logic: verify, open, dedup and store a frame.

The party's ``POST /v1/batches`` handler is ``Ingestor.prepare`` followed by
``ShareStore.insert_batches``; both run here in-process on a real SQLite
store. Each case is tried as received and re-signed with the enrolled
gateway's key. Only :class:`~cloud_tecc.errors.IngestError` may come out, and
an accepted frame must store, deduplicate or be refused as a replay.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.errors import IngestError
from cloud_tecc.party.ingest import Ingestor
from cloud_tecc.party.store import InsertResult, ShareStore
from fuzzing.fixtures import regular_segment, seeded_random_bytes
from fuzzing.harness import Target
from tecc_contract.envelope import SIGNATURE_BYTES, ClusterKey, Sealer
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw, load_private_key

_GW = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz-gw").digest())
_KEYS = [generate_cluster_keypair_raw(KemSuite.X25519) for _ in range(2)]
_INGESTOR = Ingestor(
    party=0,
    n_parties=2,
    suite=KemSuite.X25519,
    private_key=load_private_key(KemSuite.X25519, _KEYS[0][0]),
    gateway_keys={"gw-f": _GW.public_key()},
    service_id="p0",
    sign_key=Ed25519PrivateKey.generate(),
)
_DIR = Path(tempfile.mkdtemp(prefix="tecc-fuzz-ingest-"))
atexit.register(shutil.rmtree, _DIR, True)
_STORE = ShareStore(_DIR / "shares.db", synchronous="OFF")
atexit.register(_STORE.close)


def _seeds() -> list[bytes]:
    sealer = Sealer(
        gateway_id="gw-f",
        signing_key=_GW,
        clusters=[ClusterKey(i, KemSuite.X25519, k[1]) for i, k in enumerate(_KEYS)],
        columns=(Column.VALUE, Column.SQUARE),
        random_bytes=seeded_random_bytes(b"fuzz-ingest"),
    )
    out = []
    for seq in range(4):
        segs = [regular_segment("temp1", 5 + seq), regular_segment("press1", 2)]
        out += sealer.seal(seq, segs, created_ns=1_700_000_000_000_000_000)
    return out


def run(data: bytes) -> None:
    """Ingest ``data`` as sent and re-signed; IngestError if both forms were refused.

    AssertionError (a finding) if ``data`` was accepted as sent without being a seed.
    """
    refusals: list[str] = []
    resigned = data[:-SIGNATURE_BYTES] + _GW.sign(data[:-SIGNATURE_BYTES])
    for frame in (data, resigned):
        try:
            row = _INGESTOR.prepare(frame, received_ns=1)
        except IngestError as exc:
            refusals.append(exc.reason)
            continue
        # As received, only an untouched seed may be accepted: a tampered frame that
        # passes verification is a finding, not a pass.
        assert frame is resigned or frame in _SEED_SET, "a tampered frame was accepted"
        assert row.count == sum(len(s.ts) // 8 for s in row.segments)
        assert all(len(s.x) == len(s.ts) for s in row.segments)
        (outcome,) = _STORE.insert_batches([row])
        assert outcome in (InsertResult.ACCEPTED, InsertResult.DUPLICATE, InsertResult.REPLAY)
    if len(refusals) == 2:
        raise IngestError(refusals[0], "refused")


_SEED_LIST = _seeds()
_SEED_SET = frozenset(_SEED_LIST)
TARGET = Target("batch_ingest", _SEED_LIST, run, (IngestError,))
