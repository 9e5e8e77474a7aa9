"""The party's ingest step: layout refusals, one-reading batches, segment slicing, squares.

Each test names the bench.mutation mutant of cloud_tecc/party/ingest.py it kills.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.errors import IngestError
from cloud_tecc.party.ingest import Ingestor
from cloud_tecc.party.store import BatchRow
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw, load_private_key

T0 = 1_700_000_000_000_000_000
GW = Ed25519PrivateKey.generate()
KEYS = [generate_cluster_keypair_raw(KemSuite.X25519) for _ in range(3)]


def _ingestor(party: int, n_parties: int = 2) -> Ingestor:
    return Ingestor(
        party=party,
        n_parties=n_parties,
        suite=KemSuite.X25519,
        private_key=load_private_key(KemSuite.X25519, KEYS[party][0]),
        gateway_keys={"gw": GW.public_key()},
        service_id=f"party-{party}",
        sign_key=Ed25519PrivateKey.generate(),
    )


def _sealer(
    n: int = 2, columns: tuple[Column, ...] = (Column.VALUE,), codec: FixedPoint | None = None
) -> Sealer:
    return Sealer(
        gateway_id="gw",
        signing_key=GW,
        clusters=[ClusterKey(i, KemSuite.X25519, KEYS[i][1]) for i in range(n)],
        columns=columns,
        codec=codec,
    )


def _seg(sensor: str, n: int, first: float = 1.0, t0: int = T0) -> SensorSegment:
    return SensorSegment(sensor, t0 + np.arange(n, dtype=np.int64), first + np.arange(n) / 4)


def _rows(sealer: Sealer, segs: list[SensorSegment], seq: int = 1) -> list[BatchRow]:
    frames = sealer.seal(seq, segs, created_ns=T0)
    return [_ingestor(i).prepare(f, received_ns=5) for i, f in enumerate(frames)]


def test_layouts_the_party_cannot_compute_are_refused() -> None:
    """Another party count, no value column or other fraction bits: refused as 'layout'."""
    seg = [_seg("s", 3)]
    three = _sealer(3).seal(1, seg, created_ns=T0)
    with pytest.raises(IngestError, match="need 2 parties") as exc:
        _ingestor(0).prepare(three[0], received_ns=1)
    assert exc.value.reason == "layout"
    squares_only = _sealer(columns=(Column.SQUARE,)).seal(1, seg, created_ns=T0)
    with pytest.raises(IngestError, match="a value column"):
        _ingestor(0).prepare(squares_only[0], received_ns=1)
    other_bits = _sealer(codec=FixedPoint(12)).seal(1, seg, created_ns=T0)
    with pytest.raises(IngestError, match="16 fraction bits"):
        _ingestor(0).prepare(other_bits[0], received_ns=1)


def test_one_reading_batch_is_accepted() -> None:
    """A batch of exactly one reading is valid (only an empty one is refused)."""
    rows = _rows(_sealer(), [_seg("s", 1)])
    assert [r.count for r in rows] == [1, 1]
    assert rows[0].min_ts == rows[0].max_ts == T0


def test_segments_are_sliced_in_order_and_squares_kept() -> None:
    """Each stored segment holds its own readings' shares; squares only when sent."""
    codec = FixedPoint()
    segs = [_seg("a", 3, 1.0), _seg("b", 2, 7.0, T0 + 100)]
    rows = _rows(_sealer(columns=(Column.VALUE, Column.SQUARE)), segs)
    for k, seg in enumerate(segs):
        x = sum(np.frombuffer(r.segments[k].x, "<u8").astype(np.uint64) for r in rows)
        q = sum(np.frombuffer(r.segments[k].q or b"", "<u8").astype(np.uint64) for r in rows)
        assert np.array_equal(x, codec.encode(seg.values)), seg.sensor_id
        assert np.array_equal(q, codec.encode(seg.values * seg.values)), seg.sensor_id
        assert np.frombuffer(rows[0].segments[k].ts, "<i8").tolist() == seg.timestamps_ns.tolist()
    assert all(r.has_q for r in rows)
    plain = _rows(_sealer(), segs, seq=2)
    assert all(not r.has_q and all(s.q is None for s in r.segments) for r in plain)
    assert (plain[0].min_ts, plain[0].max_ts) == (T0, T0 + 101)
