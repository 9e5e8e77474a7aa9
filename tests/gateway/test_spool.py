"""The durable spool: transactions, per-cluster cursors, bound, restart, tampering."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.errors import SpoolError, SpoolFullError
from gateway.sources.mqtt import digest
from gateway.spool import PinnedKey, Spool, pack_tokens

KEY = bytes(range(32))


def _open(path: Path, max_bytes: int = 1 << 20, gw: str = "gw") -> Spool:
    return Spool(path, gateway_id=gw, n_clusters=2, spool_key=KEY, max_bytes=max_bytes)


def test_batch_leaves_only_when_all_clusters_ack(tmp_path: Path) -> None:
    """Each cluster has its own cursor; a batch is deleted after the last ack."""
    s = _open(tmp_path / "s.db")
    s.append(1, 100, 3, [b"a1", b"b1"])
    s.append(2, 200, 3, [b"a2", b"b2"])
    assert s.pending(0) == [(1, b"a1"), (2, b"a2")]
    s.ack(0, 1)
    assert s.pending(0) == [(2, b"a2")]
    assert s.pending(1)[0] == (1, b"b1")
    assert s.depth(0) == 1
    assert s.depth(1) == 2
    assert s.oldest_created_ns(0) == 200
    assert s.oldest_created_ns(1) == 100
    s.ack(1, 1)
    s.ack(1, 1)  # a repeated ack is harmless
    assert s.depth(1) == 1
    assert s.last_seq() == 2
    s.close()


def test_survives_reopen_with_identical_bytes(tmp_path: Path) -> None:
    """After a restart the seq counter, cursors, pins and frame bytes are all intact."""
    s = _open(tmp_path / "s.db")
    s.append(
        7, 1, 1, [b"x" * 100, b"y" * 100], inflight={"mq": pack_tokens([(5, 0xDEADBEEF), (6, 7)])}
    )
    s.ack(0, 7)
    s.pin(PinnedKey(1, "party-1", "x25519", b"k" * 32))
    s.close()
    s = _open(tmp_path / "s.db")
    assert s.last_seq() == 7
    assert s.depth(0) == 0
    assert s.depth(1) == 1
    assert s.pending(1) == [(7, b"y" * 100)]
    assert s.pins()[1].public_key == b"k" * 32
    assert s.inflight("mq") == {5: 0xDEADBEEF, 6: 7}
    assert s.inflight("other") == {}
    s.close()


def test_bound_refuses_without_evicting(tmp_path: Path) -> None:
    """A batch that would exceed max_bytes is refused; stored batches stay."""
    s = _open(tmp_path / "s.db", max_bytes=70_000)
    s.append(1, 1, 1, [b"a" * 30_000, b"b" * 30_000])
    with pytest.raises(SpoolFullError, match=r"raise spool\.max_bytes"):
        s.append(2, 1, 1, [b"a" * 10_000, b"b" * 10_000])
    assert s.last_seq() == 1
    assert s.depth(0) == 1
    s.ack(0, 1)
    s.ack(1, 1)
    s.append(2, 1, 1, [b"a" * 10_000, b"b" * 10_000])
    assert s.last_seq() == 2
    s.close()


def test_frames_are_encrypted_at_rest_and_tamper_evident(tmp_path: Path) -> None:
    """Frame bytes never appear in the file; a modified row fails authentication."""
    path = tmp_path / "s.db"
    s = _open(path)
    s.append(1, 1, 1, [b"SECRET-HEADER-A" * 4, b"SECRET-HEADER-B" * 4])
    s.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"SECRET-HEADER" not in raw
    db = sqlite3.connect(path)
    (blob,) = db.execute("SELECT frame FROM envelopes WHERE cluster=0").fetchone()
    flipped = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    db.execute("UPDATE envelopes SET frame=? WHERE cluster=0", (flipped,))
    db.commit()
    db.close()
    s = _open(path)
    with pytest.raises(SpoolError, match="failed authentication"):
        s.pending(0)
    s.close()


def test_fresh_spool_never_reuses_old_seqs(tmp_path: Path) -> None:
    """A spool created later starts above every seq an earlier spool can have used."""
    old = Spool(
        tmp_path / "old.db",
        gateway_id="gw",
        n_clusters=2,
        spool_key=KEY,
        max_bytes=1 << 20,
        now_ns=lambda: 1_000_000_000_000_000_000,
    )
    start = old.last_seq()
    for i in range(1, 4):
        old.append(start + i, 1, 1, [b"a", b"b"])
    new = Spool(
        tmp_path / "new.db",
        gateway_id="gw",
        n_clusters=2,
        spool_key=KEY,
        max_bytes=1 << 20,
        now_ns=lambda: 1_000_000_001_000_000_000,
    )  # 1 s later
    assert new.last_seq() > old.last_seq()
    old.close()
    new.close()


def test_refuses_another_gateways_spool(tmp_path: Path) -> None:
    """Opening a spool with another gateway id is an error that says what to do."""
    _open(tmp_path / "s.db").close()
    with pytest.raises(SpoolError, match=r"point spool\.path elsewhere"):
        _open(tmp_path / "s.db", gw="other")


def _raw(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_nothing_derived_from_a_reading_is_at_rest(tmp_path: Path) -> None:
    """Brute force over likely payloads matches nothing in the raw spool file; files are 0600.

    Fails on the code before this change: the in-flight CRC-32(topic‖payload)
    of each message was stored in clear (3 of 3 readings recovered from the
    raw file), batch timestamps and counts sat in plain columns, deleted rows
    stayed readable and the files were 0644.
    """
    topic = b"plant/line1/temp/value"
    payloads = [b"21.5", b"73.125", b"18.25"]
    tokens = [(i + 1, digest(topic, p)) for i, p in enumerate(payloads)]
    min_ts, created = 1_754_000_000_123_456_789, 1_754_000_000_987_654_321
    path = tmp_path / "state" / "spool.db"
    s = _open(path)
    s.append(7, created, 4242, [b"a", b"b"], inflight={"mq": pack_tokens(tokens)}, min_ts=min_ts)
    assert s.inflight("mq") == dict(tokens)
    assert s.pending_min_ts(0) == min_ts
    assert s.oldest_created_ns(1) == created
    raw = _raw(path)
    guesses = {f"{v / 1000:.{d}f}".encode() for v in range(0, 100_000, 25) for d in (1, 2, 3)}
    found = [
        g
        for g in guesses
        if digest(topic, g).to_bytes(4, "little") in raw
        or digest(topic, g).to_bytes(4, "big") in raw
    ]
    assert [g for g in found if g in payloads] == []
    for secret in (min_ts, created):
        assert secret.to_bytes(8, "big") not in raw
    s.close()
    again = _open(path)  # the metadata is recovered from the sealed rows
    assert again.pending_min_ts(0) == min_ts
    assert again.inflight("mq") == dict(tokens)
    assert again._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    again.close()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    for f in path.parent.glob("spool.db*"):
        assert f.stat().st_mode & 0o777 == 0o600, f


def test_metadata_and_inflight_rows_are_tamper_evident(tmp_path: Path) -> None:
    """A swapped sealed metadata row fails authentication instead of moving the cursors."""
    path = tmp_path / "s.db"
    s = _open(path)
    s.append(1, 100, 3, [b"a1", b"b1"], min_ts=10)
    s.append(2, 200, 3, [b"a2", b"b2"], min_ts=20)
    s.close()
    db = sqlite3.connect(path)
    rows = dict(db.execute("SELECT seq, sealed FROM batch_meta").fetchall())
    db.execute("UPDATE batch_meta SET sealed=? WHERE seq=1", (rows[2],))
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="failed authentication"):
        _open(path)


def test_spool_commits_with_synchronous_full(tmp_path: Path) -> None:
    """The spool's connection runs WAL with synchronous=FULL: a PUBACK follows an fsync.

    Kills the mutant that opens the spool with synchronous=OFF.
    """
    s = _open(tmp_path / "s.db")
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_reopened_spool_near_max_bytes_still_refuses(tmp_path: Path) -> None:
    """The byte count is reloaded on reopen, so max_bytes holds across a restart.

    Kills the mutant that starts a reopened spool at 0 bytes used.
    """
    s = _open(tmp_path / "s.db", max_bytes=70_000)
    s.append(1, 1, 1, [b"a" * 30_000, b"b" * 30_000])
    used = s.bytes_used
    assert 60_000 < used < 70_000
    s.close()
    s = _open(tmp_path / "s.db", max_bytes=70_000)
    assert s.bytes_used == used
    assert (s.depth(0), s.depth(1)) == (1, 1)
    with pytest.raises(SpoolFullError):
        s.append(2, 1, 1, [b"a" * 5_000, b"b" * 5_000])
    s.append(2, 1, 1, [b"a" * 2_000, b"b" * 2_000])  # what still fits is taken
    s.ack(0, 1)
    s.ack(1, 1)
    s.close()
    s = _open(tmp_path / "s.db", max_bytes=70_000)
    assert s.bytes_used == 2 * (2_000 + 12 + 16)  # nonce + GCM tag per frame
    s.close()


def test_inflight_records_survive_reopen_and_are_released(tmp_path: Path) -> None:
    """Redelivery records are durable with their batch, and dropped once released.

    A crash between the spool commit and the PUBACK leaves the records; the next
    batch's ``released`` list removes them (and only them).
    """
    s = _open(tmp_path / "s.db")
    s.append(1, 1, 1, [b"a", b"b"], inflight={"mq": pack_tokens([(11, 0xAA)])})
    s.append(2, 1, 1, [b"a", b"b"], inflight={"mq": pack_tokens([(12, 0xBB)])})
    s.close()
    s = _open(tmp_path / "s.db")  # the crash window: both batches' acks may be lost
    assert s.inflight("mq") == {11: 0xAA, 12: 0xBB}
    s.append(3, 1, 1, [b"a", b"b"], released=[1])
    assert s.inflight("mq") == {12: 0xBB}
    s.close()


def test_spool_in_a_new_directory_and_old_inflight_records_purged(tmp_path: Path) -> None:
    """The spool creates its directory; redelivery records older than 1000 batches go.

    Kills the mutants that skip the mkdir or move the purge boundary.
    """
    s = _open(tmp_path / "new" / "dir" / "s.db")
    s.append(1, 1, 1, [b"a", b"b"], inflight={"mq": pack_tokens([(1, 11)])})
    s.append(1001, 1, 1, [b"a", b"b"], inflight={"mq": pack_tokens([(2, 22)])})
    assert s.inflight("mq") == {1: 11, 2: 22}  # seq 1 is exactly 1000 batches back: kept
    s.append(1002, 1, 1, [b"a", b"b"])
    assert s.inflight("mq") == {2: 22}
    s.close()


def test_spool_is_usable_from_a_worker_thread(tmp_path: Path) -> None:
    """The agent runs the fsyncing append in a worker thread; reads stay on the loop thread."""
    s = _open(tmp_path / "s.db")
    worker = threading.Thread(target=s.append, args=(1, 1, 1, [b"a", b"b"]))
    worker.start()
    worker.join()
    assert s.pending(0) == [(1, b"a")]
    s.close()


def test_spool_from_before_progress_notices_is_migrated(tmp_path: Path) -> None:
    """A spool whose batches table has no min_ts column gets it (0 = unknown) and works on."""
    path = tmp_path / "s.db"
    s = _open(path)
    s.close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE batches; CREATE TABLE batches (seq INTEGER PRIMARY KEY, "
        "created_ns INTEGER NOT NULL, readings INTEGER NOT NULL);"
        "INSERT INTO batches VALUES (5, 1, 1);"
    )
    db.close()
    s = _open(path)
    s.append(6, 1, 1, [b"a", b"b"], min_ts=42)
    assert s.pending_min_ts(0) == 42
    s.close()


def test_rows_are_bound_to_their_seq_and_cluster(tmp_path: Path) -> None:
    """An authentic row moved to another cluster or seq fails authentication (AAD binds both)."""
    path = tmp_path / "s.db"
    s = _open(path)
    s.append(1, 1, 1, [b"for-cluster-0", b"for-cluster-1"])
    s.append(2, 1, 1, [b"second-0", b"second-1"])
    s.close()
    db = sqlite3.connect(path)
    (row0,) = db.execute("SELECT frame FROM envelopes WHERE cluster=0 AND seq=1").fetchone()
    db.execute("UPDATE envelopes SET frame=? WHERE cluster=1 AND seq=1", (row0,))
    db.execute("UPDATE envelopes SET frame=? WHERE cluster=0 AND seq=2", (row0,))
    db.commit()
    db.close()
    s = _open(path)
    assert s.pending(0, limit=1) == [(1, b"for-cluster-0")]
    with pytest.raises(SpoolError, match="failed authentication"):
        s.pending(1)
    with pytest.raises(SpoolError, match="failed authentication"):
        s.pending(0)
    s.close()


def test_inputs_and_defaults_are_checked(tmp_path: Path) -> None:
    """A wrong frame count is refused; min_ts defaults to 0 (hold notices); the first seq is
    the creation time in ms; an unreadable file says what to do."""
    s = Spool(
        tmp_path / "s.db",
        gateway_id="gw",
        n_clusters=2,
        spool_key=KEY,
        max_bytes=1 << 20,
        now_ns=lambda: 1_234_567_890_123_456_789,
    )
    assert s.last_seq() == 1_234_567_890_123
    with pytest.raises(SpoolError, match="expected 2 frames, got 1"):
        s.append(1, 1, 1, [b"only-one"])
    assert s.depth(0) == 0
    s.append(1, 1, 1, [b"a", b"b"])
    assert s.pending_min_ts(0) == 0
    s.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="move it aside"):
        _open(junk)


def test_bound_is_inclusive_and_acked_batches_leave_the_file(tmp_path: Path) -> None:
    """A batch that fills max_bytes exactly is taken; fully acked batches leave no row."""
    per_frame = 100 + 12 + 16  # payload + GCM nonce + tag
    s = _open(tmp_path / "s.db", max_bytes=2 * per_frame)
    s.append(1, 1, 1, [b"a" * 100, b"b" * 100])
    assert s.bytes_used == s.max_bytes
    with pytest.raises(SpoolFullError):
        s.append(2, 1, 1, [b"a", b"b"])
    s.ack(0, 1)
    assert s._db.execute("SELECT count(*) FROM batches").fetchone()[0] == 1  # cluster 1 waits
    s.ack(1, 1)
    assert s._db.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    assert s.bytes_used == 0
    s.close()


def test_failed_append_rolls_back_and_pending_pages_by_64(tmp_path: Path) -> None:
    """A seq used twice is refused without a trace; pending() returns 64 rows by default."""
    s = _open(tmp_path / "s.db")
    for seq in range(1, 71):
        s.append(seq, 1, 1, [b"a", b"b"])
    with pytest.raises(SpoolError, match="could not spool batch 5"):
        s.append(5, 1, 1, [b"x", b"y"], inflight={"mq": pack_tokens([(9, 9)])})
    assert s.inflight("mq") == {}
    assert s.depth(0) == 70
    assert s.last_seq() == 70
    assert [seq for seq, _ in s.pending(0)] == list(range(1, 65))
    s.append(71, 1, 1, [b"a", b"b"])  # the connection is not left inside a transaction
    assert s.last_seq() == 71
    s.close()


def test_unpin_drops_a_clusters_queue_and_pin(tmp_path: Path) -> None:
    """unpin forgets the key, drops that cluster's envelopes and fixes depth and bytes."""
    s = _open(tmp_path / "s.db")
    assert s.pending_min_ts(0) is None  # nothing pending: no bound
    s.pin(PinnedKey(0, "party-0", "x25519", b"k" * 32))
    s.pin(PinnedKey(1, "party-1", "x25519", b"m" * 32))
    s.append(1, 1, 1, [b"a" * 10, b"b" * 20], min_ts=7)
    s.append(2, 1, 1, [b"a" * 10, b"b" * 20], min_ts=9)
    s.ack(1, 1)  # batch 1 now waits only for cluster 0
    assert s.unpin(0) == 2
    assert (s.depth(0), s.depth(1)) == (0, 1)
    assert s.pending(0) == []
    assert s.pending_min_ts(0) is None
    assert s.pending_min_ts(1) == 9
    assert s.bytes_used == 20 + 12 + 16  # batch 2's frame for cluster 1 is all that is left
    assert set(s.pins()) == {1}
    assert s._db.execute("SELECT seq FROM batches").fetchall() == [(2,)]
    s.append(3, 1, 1, [b"c", b"d"])  # no transaction left open
    s.close()
    s = _open(tmp_path / "s.db")
    assert (s.depth(0), s.depth(1), s.bytes_used) == (1, 2, 20 + 12 + 16 + 2 * (1 + 12 + 16))
    s.close()


def test_closed_spool_refuses_use(tmp_path: Path) -> None:
    """close() really closes the database (a later call fails instead of writing)."""
    s = _open(tmp_path / "s.db")
    s.close()
    with pytest.raises(sqlite3.ProgrammingError):
        s.last_seq()
