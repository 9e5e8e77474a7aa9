"""The party's share store: dedup keyed by (gateway, seq), durability settings, rows intact."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from cloud_tecc.analytics.plan import StreamState
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


def _state(v: int) -> StreamState:
    return StreamState(
        np.array([v], dtype=np.uint64), np.array([v, v], dtype=np.uint64), np.zeros(2, np.uint64)
    )


def _epochs(store: ShareStore) -> list[int]:
    return [int(r[0]) for r in store._r.execute("SELECT epoch_ns FROM epochs ORDER BY epoch_ns")]


def test_connection_settings_and_lifecycle(tmp_path: Path) -> None:
    """Nested paths are created, settings hold per connection, close closes both, reopen works."""
    path = tmp_path / "a" / "b" / "s.db"
    store = ShareStore(path, synchronous="OFF")
    assert store.path == path
    for conn in (store._w, store._r):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 0
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    worker = threading.Thread(target=store.insert_batches, args=([_row("gw", 1)],))
    worker.start()  # the agent's writer thread uses the store too
    worker.join()
    assert store.batch_count() == 1
    store.close()
    for conn in (store._w, store._r):
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    again = ShareStore(path)
    assert again.batch_count() == 1
    again.close()


def test_failed_insert_rolls_back_and_the_store_stays_usable(tmp_path: Path) -> None:
    """A row that cannot be stored undoes its whole transaction; the next insert works."""
    store = ShareStore(tmp_path / "s.db")
    good = _row("gw", 1)
    seg = good.segments[0]
    broken = dataclasses.replace(_row("gw", 2), segments=(seg, seg))  # same segment idx twice
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_batches([good, broken])
    assert store.batch_count() == 0  # the good row of that transaction is gone too
    assert store.insert_batches([good]) == [InsertResult.ACCEPTED]
    store.close()


def test_reading_bounds_and_pruning(tmp_path: Path) -> None:
    """earliest_reading_after and prune_batches follow the batches' timestamp bounds."""
    store = ShareStore(tmp_path / "s.db")
    assert store.earliest_reading_after(0) is None
    store.insert_batches([_row("gw", 1, t0=1000), _row("gw", 2, t0=2000), _row("gw", 3, t0=3000)])
    assert store.earliest_reading_after(0) == 1000
    assert store.earliest_reading_after(1001) == 1001  # batch 1 still holds a reading at 1001
    assert store.earliest_reading_after(1500) == 2000
    assert store.earliest_reading_after(5000) is None
    assert store.batches_overlapping(2000, 3000) == [("gw", 2)]
    assert store.prune_batches(2001) == 1  # only batch 1 lies wholly before 2001
    assert store.prune_batches(2001) == 0
    assert store.has_batches([("gw", 1), ("gw", 2)]) == [("gw", 1)]
    assert store.load_segments([("gw", 1)]) == []
    assert len(store.load_segments([("gw", 2)])) == 1
    store.close()


def test_epochs_recommit_prune_rewind_and_roll_back(tmp_path: Path) -> None:
    """Committing an epoch again replaces it; older epochs go; a failed commit changes nothing."""
    store = ShareStore(tmp_path / "s.db")
    key = ("gw", "s")
    assert store.watermark() == 0
    for end in (10, 20, 30):
        store.commit_epoch(end, {key: _state(end)}, 5, 1, result=b"r%d" % end)
    assert store.watermark() == 30
    assert _epochs(store) == [20, 30]  # epochs before the previous watermark are pruned
    store.commit_epoch(30, {key: _state(31)}, 5, 2, result=b"again")  # recomputed
    assert _epochs(store) == [20, 30]
    st = store.load_states([key], 30)[key]
    assert (int(st.centre[0]), st.hist_x.tolist(), st.hist_yy.tolist()) == (31, [31, 31], [0, 0])
    bad = StreamState(np.array([1], np.uint64), cast(Any, object()), np.zeros(1, np.uint64))
    with pytest.raises(TypeError):
        store.commit_epoch(40, {key: bad}, 5, 3)
    assert _epochs(store) == [20, 30]  # nothing of the failed commit remains
    store.commit_epoch(40, {key: _state(40)}, 5, 3)  # and the store still commits
    store.rewind(30)
    assert store.watermark() == 30
    assert int(store.load_states([key], 10**9)[key].centre[0]) == 31
    store.close()
