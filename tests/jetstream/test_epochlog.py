"""The shard's committed epochs in TECC_EPOCHS, and the configuration of workers with standbys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import numpy as np
import pytest
import yaml

from cloud_tecc.analytics.plan import StreamState
from cloud_tecc.config import JetStreamConfig, load_party
from cloud_tecc.errors import CloudConfigError
from cloud_tecc.jetstream import epochlog
from cloud_tecc.jetstream.server import start_node
from cloud_tecc.party.store import ShareStore
from demo.devstack.deployment import Deployment
from tecc_contract.scale import Scale


def _state(seed: int) -> StreamState:
    rng = np.random.default_rng(seed)
    ring = rng.integers(0, 2**63, size=7, dtype=np.uint64)
    return StreamState(ring[:1], ring[1:3], ring[3:7], Scale(-2, 1.5))


def _epoch(end: int, states: dict[tuple[str, str], StreamState], body: bytes | None) -> bytes:
    return epochlog.encode_epoch(
        epochlog.EpochWire(
            shard=0,
            end_ns=end,
            readings=3,
            done_ns=end + 1,
            fence=5,
            states=epochlog.wire_states(states),
            body=body,
        )
    )


def test_epoch_messages_round_trip_and_malformed_ones_are_refused() -> None:
    states = {("gw", "a"): _state(1), ("gw", "b"): _state(2)}
    back = epochlog.decode_epoch(_epoch(10, states, b"result"))
    assert back.end_ns == 10
    assert back.body == b"result"
    got = epochlog.store_states(back.states)
    assert set(got) == set(states)
    for key, st in states.items():
        assert np.array_equal(got[key].hist_yy, st.hist_yy)
        assert got[key].scale == st.scale
    for bad in (b"", b"\x02" + _epoch(10, {}, None)[1:], b"\x01garbage"):
        with pytest.raises(epochlog.EpochLogError):
            epochlog.decode_epoch(bad)


def _dump(store: ShareStore) -> tuple[int, list[tuple[object, ...]], list[tuple[object, ...]]]:
    conn = store._r  # the test reads the tables as stored
    states = conn.execute("SELECT * FROM stream_state ORDER BY 1, 2, 3").fetchall()
    outbox = conn.execute("SELECT * FROM outbox ORDER BY 1").fetchall()
    return store.watermark(), states, outbox


def test_a_replay_through_the_record_rebuilds_the_owners_store(tmp_path: Path) -> None:
    """Epochs, a rewind and a later (uncommitted) message: the rebuilt store equals the owner's."""
    dep = start_node(tmp_path / "nats")
    owner = ShareStore(tmp_path / "owner.db")
    fresh = ShareStore(tmp_path / "fresh.db")
    cfg = JetStreamConfig(servers=tuple(dep.servers))

    async def run() -> int:
        nc = await nats.connect(servers=dep.servers)
        js = nc.jetstream()
        await epochlog.ensure_stream(js, cfg)
        seqs = []
        # 10, 20, then a rewind to 10 and 20 recomputed with other states, then 30
        for end, seed, body in ((10, 1, b"r10"), (20, 2, b"r20"), (20, 3, b"r20b"), (30, 4, None)):
            states = {("gw", "a"): _state(seed)}
            owner.commit_epoch(end, states, 3, end + 1, body)
            ack = await js.publish(epochlog.subject(0), _epoch(end, states, body))
            seqs.append(ack.seq)
        # another shard's epoch and a message after the record's log_seq are not applied
        await js.publish(epochlog.subject(1), _epoch(99, {}, b"other"))
        await js.publish(epochlog.subject(0), _epoch(40, {("gw", "a"): _state(9)}, b"late"))

        async def apply(batch: list[epochlog.EpochWire]) -> None:
            fresh.commit_epochs([
                (e.end_ns, epochlog.store_states(e.states), e.readings, e.done_ns, e.body)
                for e in batch
            ])  # fmt: skip

        n = await epochlog.replay(js, 0, seqs[-1], apply)
        await nc.close()
        return n

    try:
        assert asyncio.run(run()) == 4
        assert _dump(fresh) == _dump(owner)
        assert fresh.watermark() == 30
    finally:
        owner.close()
        fresh.close()
        dep.stop()


def test_worker_id_and_several_worker_addresses_in_the_config(tmp_path: Path) -> None:
    dep = Deployment(tmp_path, {"window_s": 10, "min_count": 1}, {}, standbys=1)
    cfg = load_party(tmp_path / "party0.yaml")
    peer = cfg.peers[1]
    assert len(peer.mpc_candidates) == 2
    assert peer.base_urls == (dep.url("party1"), dep.url("party1-b1"))
    assert cfg.worker_id.startswith("party0-")  # the default: <service_id>-<host>-<pid>
    single = load_party(tmp_path / "party1.yaml").peers[0]
    doc = yaml.safe_load((tmp_path / "party0.yaml").read_text())
    doc["worker_id"] = "no spaces allowed"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CloudConfigError, match="worker_id"):
        load_party(tmp_path / "bad.yaml")
    assert len(single.mpc_candidates) == 2
    (tmp_path / "one").mkdir()
    one = Deployment(tmp_path / "one", {"window_s": 10, "min_count": 1}, {})
    ep = load_party(one.root / "party0.yaml").peers[1]
    assert ep.mpc_candidates == (ep.mpc_address,)
    assert ep.base_urls == (one.url("party1"),)


def test_an_epoch_records_its_shard_map_version_and_older_records_still_read() -> None:
    """The epoch log names the map version each epoch was agreed under; records written
    before the field existed (seven fields) decode with ``map`` empty."""
    epoch = epochlog.EpochWire(
        shard=1, end_ns=20, readings=0, done_ns=21, fence=2, states=(), body=None, map="2:ab"
    )
    assert epochlog.decode_epoch(epochlog.encode_epoch(epoch)).map == "2:ab"
    old = bytes([epochlog.EPOCH_VERSION]) + msgspec.msgpack.encode([1, 20, 0, 21, 2, [], None])
    assert epochlog.decode_epoch(old).map == ""


def test_a_long_replay_is_applied_in_batches_in_order(tmp_path: Path) -> None:
    """300 epochs reach ``apply`` in order, in batches of at most ``REPLAY_BATCH``.

    Fails on the code before this change (one request and one SQLite transaction
    per epoch: ``apply`` got one epoch at a time, 11 ms each in bench.soak --ha).
    """
    dep = start_node(tmp_path / "nats")
    cfg = JetStreamConfig(servers=tuple(dep.servers))
    sizes: list[int] = []
    ends: list[int] = []

    async def run() -> int:
        nc = await nats.connect(servers=dep.servers)
        js = nc.jetstream()
        await epochlog.ensure_stream(js, cfg)
        last = 0
        for end in range(1, 301):
            last = (await js.publish(epochlog.subject(0), _epoch(end, {}, None))).seq

        async def apply(batch: list[epochlog.EpochWire]) -> None:
            sizes.append(len(batch))
            ends.extend(e.end_ns for e in batch)

        n = await epochlog.replay(js, 0, last, apply)
        await nc.close()
        return n

    try:
        assert asyncio.run(run()) == 300
    finally:
        dep.stop()
    assert ends == list(range(1, 301))
    assert 1 < len(sizes) <= 300 // 2
    assert max(sizes) <= epochlog.REPLAY_BATCH
