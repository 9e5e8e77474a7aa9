"""Party ingest, durable store and epoch bookkeeping (sans-IO parts)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.analytics.plan import StreamState
from cloud_tecc.config import load_party
from cloud_tecc.errors import CloudConfigError, IngestError
from cloud_tecc.party.epochs import ProgressTracker, Proposal, build_epoch, epoch_of
from cloud_tecc.party.ingest import Ingestor
from cloud_tecc.party.server import gateway_keys
from cloud_tecc.party.store import InsertResult, ShareStore
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw, load_private_key

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def _setup(suite: KemSuite = KemSuite.X25519) -> tuple[Sealer, list[Ingestor], Ed25519PrivateKey]:
    gw = Ed25519PrivateKey.generate()
    keys = [generate_cluster_keypair_raw(suite) for _ in range(2)]
    sealer = Sealer(
        gateway_id="gw",
        signing_key=gw,
        clusters=[ClusterKey(i, suite, k[1]) for i, k in enumerate(keys)],
        columns=(Column.VALUE, Column.SQUARE),
    )
    ingestors = [
        Ingestor(
            party=i,
            n_parties=2,
            suite=suite,
            private_key=load_private_key(suite, keys[i][0]),
            gateway_keys={"gw": gw.public_key()},
            service_id=f"p{i}",
            sign_key=Ed25519PrivateKey.generate(),
        )
        for i in range(2)
    ]
    return sealer, ingestors, gw


def _segments(n: int = 20, start: int = 0) -> list[SensorSegment]:
    ts = T0 + (start + np.arange(n, dtype=np.int64)) * (S // 10)
    return [SensorSegment("temp", ts, np.linspace(1.0, 2.0, n))]


@pytest.mark.parametrize("suite", list(KemSuite))
def test_ingest_opens_shares_that_reconstruct(suite: KemSuite) -> None:
    """Both parties' stored shares add up to the gateway's fixed-point values."""
    sealer, ing, _ = _setup(suite)
    frames = sealer.seal(1, _segments(), created_ns=T0)
    rows = [ing[i].prepare(frames[i], received_ns=T0) for i in range(2)]
    x = [np.frombuffer(r.segments[0].x, dtype="<u8") for r in rows]
    assert np.array_equal((x[0] + x[1]).view(np.int64), np.rint(np.linspace(1, 2, 20) * 65536))
    assert rows[0].min_ts == T0
    assert rows[0].has_q


def test_ingest_refusals_have_reasons() -> None:
    """Forged, misaddressed and unknown-gateway frames are refused with a reason."""
    sealer, ing, _ = _setup()
    frames = sealer.seal(1, _segments(), created_ns=T0)
    forged = bytearray(frames[0])
    forged[-3] ^= 0xFF
    cases = [(bytes(forged), "signature"), (frames[1], "decrypt"), (b"junk", "malformed")]
    stranger = Sealer(
        gateway_id="evil", signing_key=Ed25519PrivateKey.generate(), clusters=sealer._clusters
    )
    cases.append((stranger.seal(1, _segments(), created_ns=T0)[0], "signature"))
    for frame, reason in cases:
        with pytest.raises(IngestError) as info:
            ing[0].prepare(frame, received_ns=T0)
        assert info.value.reason == reason


def test_store_dedups_and_detects_replays(tmp_path: Path) -> None:
    """Same frame twice is a duplicate, a different frame under a used seq a replay."""
    sealer, ing, _ = _setup()
    store = ShareStore(tmp_path / "s.db")
    f1 = sealer.seal(1, _segments(), created_ns=T0)[0]
    f1b = sealer.seal(1, _segments(), created_ns=T0)[0]
    f2 = sealer.seal(2, _segments(start=20), created_ns=T0)[0]
    rows = [ing[0].prepare(f, received_ns=T0) for f in (f1, f1, f1b, f2)]
    assert store.insert_batches(rows) == [
        InsertResult.ACCEPTED,
        InsertResult.DUPLICATE,
        InsertResult.REPLAY,
        InsertResult.ACCEPTED,
    ]
    store.close()
    reopened = ShareStore(tmp_path / "s.db")
    assert reopened.batch_count() == 2
    assert reopened.batches_overlapping(T0, T0 + 3 * S) == [("gw", 1), ("gw", 2)]
    assert reopened.batches_overlapping(T0 + 4 * S, T0 + 5 * S) == []
    reopened.close()


def test_epoch_closing_rule() -> None:
    """Closed once every live gateway declared its end; silence of active_s drops a gateway."""
    end, started = T0 + S, T0
    tr = ProgressTracker(["a", "b"], started_ns=started, active_ns=60 * S)
    now = T0 + 2 * S
    assert not tr.closed(end, now)  # enrolled, never heard: held for active_s after the start
    tr.note("a", end + 1, heard_ns=now)
    assert not tr.closed(end, now)
    tr.note("b", end, heard_ns=now)
    assert tr.closed(end, now)
    tr.note("b", end - S, heard_ns=now)  # an older (replayed) notice never moves progress back
    assert tr.closed(end, now)
    assert not tr.closed(end + 2, now)
    tr.heard("b", now + 30 * S)  # a batch: alive, progress unchanged
    assert not tr.closed(end + 2, now + 80 * S)  # b heard 50 s ago: still live
    assert tr.closed(end + 2, now + 91 * S)  # b silent for over 60 s: no longer waited for
    tr.note("x", end * 2, heard_ns=now)  # a gateway that is not enrolled counts for nothing
    assert set(tr.snapshot(now)) == {"a", "b"}
    assert ProgressTracker([], started_ns=0, active_ns=S).closed(end, now)


def test_epoch_bounds_and_proposal_round_trip() -> None:
    """The epoch holding a timestamp; a proposal survives its JSON form."""
    start, end = epoch_of(T0 + 3 * S, 10 * S)
    assert (start, end) == (T0, T0 + 10 * S)
    p = Proposal(start, end, (("a", 1), ("b", 7)))
    assert Proposal.from_json(p.to_json()) == p


def test_build_epoch_orders_and_filters(tmp_path: Path) -> None:
    """Readings outside the epoch are dropped; streams sort by key, readings by time."""
    sealer, ing, _ = _setup()
    store = ShareStore(tmp_path / "s.db")
    frames = [sealer.seal(seq, _segments(start=5 * seq), created_ns=T0)[0] for seq in (2, 1)]
    store.insert_batches([ing[0].prepare(f, received_ns=T0) for f in frames])
    segs = store.load_segments(store.batches_overlapping(T0 + S, T0 + 2 * S))
    ep = build_epoch(T0 + S, T0 + 2 * S, segs, {})
    (stream,) = ep.streams
    assert list(stream.timestamps_ns) == [T0 + S + i * (S // 10) for i in range(10) for _ in "ab"]
    store.close()


def test_state_versions_are_pruned_but_one_epoch_can_be_redone(tmp_path: Path) -> None:
    """Old stream states are pruned at commit; a rewind by one epoch still finds its state."""
    store = ShareStore(tmp_path / "s.db")
    key = ("gw", "temp")
    for k in range(1, 6):
        st = StreamState(
            np.array([k], np.uint64), np.arange(k, dtype=np.uint64), np.arange(k, dtype=np.uint64)
        )
        store.commit_epoch(k * S, {key: st}, 1, T0, result=b"msg%d" % k)
    rows = store._r.execute("SELECT COUNT(*) FROM stream_state").fetchone()[0]
    assert rows == 2
    store.rewind(4 * S)
    assert store.watermark() == 4 * S
    assert int(store.load_states([key], 4 * S)[key].centre[0]) == 4
    assert store.next_outgoing() == (S, b"msg1")
    store.delivered(S, b"msg1")
    assert store.next_outgoing() == (2 * S, b"msg2")
    store.close()


def test_enrolled_keys_accept_hex_and_base64(tmp_path: Path) -> None:
    """The gateway allow-list takes hex or base64 keys and names a bad entry."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    doc = {
        "role": "party",
        "service_id": "p0",
        "party": 0,
        "state_dir": "s",
        "policy": "pol.yaml",
        "gateways": {"a": raw.hex(), "b": base64.b64encode(raw).decode()},
        "peers": {1: {"service_id": "p1", "url": "http://127.0.0.1:1", "mpc": "127.0.0.1:2"}},
        "dealer": {"service_id": "d", "url": "http://127.0.0.1:3", "mpc": "127.0.0.1:4"},
        "output": {"service_id": "o", "url": "http://127.0.0.1:5"},
    }
    (tmp_path / "pol.yaml").write_text("window_s: 5\n")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    keys = gateway_keys(load_party(tmp_path / "p.yaml"))
    assert keys["a"].public_bytes_raw() == keys["b"].public_bytes_raw() == raw
    doc["gateways"] = {"bad": "zz"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CloudConfigError, match="'bad'"):
        gateway_keys(load_party(tmp_path / "p.yaml"))
