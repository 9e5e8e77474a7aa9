"""The durable spool: transactions, per-cluster cursors, bound, restart, tampering."""

from __future__ import annotations

import sqlite3
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
