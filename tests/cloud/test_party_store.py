"""The party's share store: dedup keyed by (gateway, seq), durability settings, rows intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cloud_tecc.party.store import BatchRow, InsertResult, SegmentRow, ShareStore

SYNC_FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def _row(gateway: str, seq: int, content: bytes = b"v1", t0: int = 1000) -> BatchRow:
    ts = t0.to_bytes(8, "little") + (t0 + 1).to_bytes(8, "little")
    seg = SegmentRow(0, "s", ts, hashlib.sha256(content).digest()[:16], None)
    return BatchRow(
        gateway=gateway,
        seq=seq,
        digest=hashlib.sha256(gateway.encode() + content).digest(),
        received_ns=1,
        count=2,
        min_ts=t0,
        max_ts=t0 + 1,
        has_q=False,
        segments=(seg,),
    )


def test_same_seq_from_two_gateways_is_two_batches(tmp_path: Path) -> None:
    """Gateways number independently: (gw-a, 7) and (gw-b, 7) are both accepted and kept.

    Kills the mutant that deduplicates by seq alone (gw-b's batch would be a replay).
    """
    store = ShareStore(tmp_path / "s.db")
    a, b = _row("gw-a", 7), _row("gw-b", 7)
    assert store.insert_batches([a]) == [InsertResult.ACCEPTED]
    assert store.insert_batches([b]) == [InsertResult.ACCEPTED]
    assert store.batch_count() == 2
    assert store.has_batches([("gw-a", 7), ("gw-b", 7), ("gw-c", 7)]) == [("gw-c", 7)]
    segs = store.load_segments([("gw-a", 7), ("gw-b", 7)])
    assert [(s.gateway, s.seq) for s in segs] == [("gw-a", 7), ("gw-b", 7)]
    assert segs[0].x.tobytes() == a.segments[0].x
    assert segs[1].x.tobytes() == b.segments[0].x
    # Retries stay per gateway: identical bytes are duplicates, other bytes replays.
    assert store.insert_batches([_row("gw-b", 7), _row("gw-a", 7, b"v2")]) == [
        InsertResult.DUPLICATE,
        InsertResult.REPLAY,
    ]
    assert store.batch_count() == 2
    store.close()


def test_one_transaction_mixing_outcomes(tmp_path: Path) -> None:
    """A multi-row insert reports each row's outcome in order; nothing extra is stored."""
    store = ShareStore(tmp_path / "s.db")
    store.insert_batches([_row("gw-a", 1)])
    out = store.insert_batches([_row("gw-a", 1), _row("gw-a", 2), _row("gw-a", 1, b"x")])
    assert out == [InsertResult.DUPLICATE, InsertResult.ACCEPTED, InsertResult.REPLAY]
    assert store.batch_count() == 2
    store.close()


def test_share_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    """Both connections of the default store run synchronous=FULL (an ack means on disk).

    Kills the mutant that opens the store with synchronous=OFF or NORMAL.
    """
    store = ShareStore(tmp_path / "s.db")
    for conn in (store._w, store._r):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == SYNC_FULL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
