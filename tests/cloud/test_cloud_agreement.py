"""N coordinators over an in-memory mesh: epoch agreement, computation and rewind."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from cloud_tecc.analytics.layout import ReleaseLayout, as_layout
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import ReferenceAnalytics, StreamReadings
from cloud_tecc.config import load_party
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory
from cloud_tecc.errors import AnalyticsError, PeerError
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork, Transport
from cloud_tecc.output.collector import try_complete
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.ingest import Ingestor
from cloud_tecc.party.store import BatchRow, ShareStore
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw, load_private_key

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
POLICY = {
    "window_s": 10,
    "min_count": 10,
    "rates": [{"sensor": "*", "max_delta": 2.0}],
    "zscore": {"window": 40, "k": 3.0, "min_baseline": 10},
}


def _coordinators(
    tmp: Path,
    tracked: tuple[str, ...] = (),
    n: int = 2,
    refusing: dict[int, tuple[str, ...]] | None = None,
    map_ids: dict[int, Callable[[int], str | None]] | None = None,
) -> list[Coordinator]:
    (tmp / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    out = []
    for i in range(n):
        peers = {
            j: {"service_id": f"p{j}", "url": "http://127.0.0.1:1", "mpc": "127.0.0.1:2"}
            for j in range(n)
            if j != i
        }
        doc = {
            "role": "party",
            "service_id": f"p{i}",
            "party": i,
            "n_parties": n,
            "state_dir": f"s{i}",
            "policy": "policy.yaml",
            "gateways": {},
            "peers": peers,
            "dealer": {"service_id": "d", "url": "http://127.0.0.1:3", "mpc": "127.0.0.1:4"},
            "output": {"service_id": "o", "url": "http://127.0.0.1:5"},
        }
        (tmp / f"p{i}.yaml").write_text(yaml.safe_dump(doc))
        out.append(
            Coordinator(
                cfg=load_party(tmp / f"p{i}.yaml"),
                enclave=cast(Enclave, None),
                store=ShareStore(tmp / f"s{i}.db"),
                directory=cast(AttestedDirectory, None),
                http=cast(aiohttp.ClientSession, None),
                registry=CollectorRegistry(),
                tracker=ProgressTracker(tracked, started_ns=0, active_ns=60 * S),
                refusing=functools.partial(tuple, (refusing or {}).get(i, ())),
                map_id=(map_ids or {}).get(i),
            )
        )
    return out


def _ingest(
    coords: list[Coordinator],
    streams: list[StreamReadings],
    seconds: dict[int, range] | None = None,
    gateway: str = "gw",
) -> list[tuple[int, BatchRow]]:
    """Seal 30 one-second batches; party i stores those of ``seconds[i]`` (default all).

    Returns the (party, row) pairs held back, to be stored later.
    """
    held: list[tuple[int, BatchRow]] = []
    n = len(coords)
    gw = Ed25519PrivateKey.generate()
    keys = [generate_cluster_keypair_raw(KemSuite.X25519) for _ in range(n)]
    sealer = Sealer(
        gateway_id=gateway,
        signing_key=gw,
        columns=(Column.VALUE, Column.SQUARE),
        clusters=[ClusterKey(i, KemSuite.X25519, k[1]) for i, k in enumerate(keys)],
    )
    ing = [
        Ingestor(
            party=i,
            n_parties=n,
            suite=KemSuite.X25519,
            private_key=load_private_key(KemSuite.X25519, keys[i][0]),
            gateway_keys={gateway: gw.public_key()},
            service_id=f"p{i}",
            sign_key=Ed25519PrivateKey.generate(),
        )
        for i in range(n)
    ]
    for sec in range(30):
        segs = []
        for s in streams:
            m = (s.timestamps_ns >= T0 + sec * S) & (s.timestamps_ns < T0 + (sec + 1) * S)
            segs.append(SensorSegment(s.sensor, s.timestamps_ns[m], s.values[m]))
        frames = sealer.seal(sec, segs, created_ns=T0)
        for i, c in enumerate(coords):
            row = ing[i].prepare(frames[i], received_ns=T0)
            if seconds is None or sec in seconds.get(i, range(30)):
                c.store.insert_batches([row])
            else:
                held.append((i, row))
    return held


def _streams(seed: int, sensors: int = 1, gateway: str = "gw") -> list[StreamReadings]:
    """30 s of one gateway's readings at 10 Hz per sensor."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(300, dtype=np.int64) * (S // 10)
    return [
        StreamReadings(gateway, f"s{k}", ts, 20 + rng.normal(0, 1, 300)) for k in range(sensors)
    ]


async def _reference(streams: list[StreamReadings]) -> dict[int, Any]:
    """The plaintext reference's released results per epoch start."""
    results = await ReferenceAnalytics(policy_from_mapping(POLICY)).run(streams)
    return {r.epoch.start_ns: r.released for r in results}


async def _run_until(
    coords: list[Coordinator], net: MemoryNetwork, dealer: LocalDealer, watermark: int
) -> None:
    for _ in range(20):
        if all(c.store.watermark() == watermark for c in coords):
            return
        await asyncio.gather(
            *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
        )
    raise AssertionError("the coordinators did not reach the watermark")


def _released(coords: list[Coordinator]) -> dict[int, Any]:
    out = {}
    while (item := coords[0].store.next_outgoing()) is not None:
        items = [item] + [c.store.next_outgoing() for c in coords[1:]]
        assert all(o is not None and o[0] == item[0] for o in items)
        docs = [json.loads(o[1]) for o in items if o is not None]
        pending = {
            d["party"]: (as_layout(d["layout"]), base64.b64decode(d["vector"])) for d in docs
        }
        done = try_complete(coords[0].cfg.service.policy, len(coords), pending)
        assert done is not None
        out[done.epoch_ns] = done.rows
        for c, o in zip(coords, items, strict=True):
            assert o is not None
            c.store.delivered(*o)
    return out


@pytest.mark.parametrize("n", [2, 3])
async def test_agreement_computes_epochs_and_redoes_an_uncommitted_one(
    tmp_path: Path, n: int
) -> None:
    """All parties compute the same epochs; a party that lost its last commit is caught up."""
    streams = _streams(4, sensors=2)
    want = await _reference(streams)
    coords = _coordinators(tmp_path, n=n)
    _ingest(coords, streams)
    net, dealer = MemoryNetwork(n), LocalDealer(n)
    await _run_until(coords, net, dealer, T0 + 30 * S)
    got = _released(coords)
    assert got == want
    # The last party "crashed" before committing the last epoch: it lost that commit.
    coords[-1].store.rewind(T0 + 20 * S)
    await _run_until(coords, net, dealer, T0 + 30 * S)
    again = _released(coords)
    assert again == {T0 + 20 * S: want[T0 + 20 * S]}
    for c in coords:
        c.store.close()


@pytest.mark.parametrize("n", [2, 3])
async def test_follower_refuses_an_epoch_without_batches_it_holds(tmp_path: Path, n: int) -> None:
    """The leader missed batches (it was down): no epoch is computed without them.

    Party 0 holds the batches of seconds 0-14 only, the others all 30. Party 0
    would propose the epoch [10 s, 20 s) with what it has; the followers hold
    15-19 as well and refuse, so nothing is computed until party 0 receives
    them, and then the results equal the plaintext reference.
    """
    streams = _streams(5)
    want = await _reference(streams)
    coords = _coordinators(tmp_path, tracked=("gw",), n=n)
    for c in coords:
        c.tracker.note("gw", T0 + 30 * S, heard_ns=time.time_ns())
    held = _ingest(coords, streams, {0: range(15)})
    net, dealer = MemoryNetwork(n), LocalDealer(n)
    for _ in range(4):
        await asyncio.gather(
            *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
        )
    assert [c.store.watermark() for c in coords] == [T0 + 10 * S] * n
    for i, row in held:
        coords[i].store.insert_batches([row])
    await _run_until(coords, net, dealer, T0 + 30 * S)
    assert _released(coords) == want
    for c in coords:
        c.store.close()


async def test_an_epoch_waits_for_every_partys_progress_notices(tmp_path: Path) -> None:
    """Party 1 has not heard the gateway declare the epoch complete: nothing is computed."""
    streams = _streams(6)
    coords = _coordinators(tmp_path, tracked=("gw",))
    _ingest(coords, streams)
    coords[0].tracker.note("gw", T0 + 30 * S, heard_ns=time.time_ns())
    coords[1].tracker.note("gw", T0 + 10 * S, heard_ns=time.time_ns())
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    for _ in range(4):
        await asyncio.gather(
            *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
        )
    assert [c.store.watermark() for c in coords] == [T0 + 10 * S] * 2
    coords[1].tracker.note("gw", T0 + 30 * S, heard_ns=time.time_ns())
    await _run_until(coords, net, dealer, T0 + 30 * S)
    for c in coords:
        c.store.close()


async def test_batches_of_a_gone_gateway_held_by_one_party_are_left_out(tmp_path: Path) -> None:
    """A gateway died after delivering seconds 15-19 to party 1 only: not a stall forever.

    While the gateway is live both parties wait for the missing shares; once
    neither has heard from it within active_s, party 1 reports the orphans,
    party 0 leaves them out, and both compute the epoch from what both hold.
    """
    streams = _streams(7)
    coords = _coordinators(tmp_path, tracked=("gw",))
    _ingest(coords, streams, {0: range(15), 1: range(20)})
    for c in coords:  # live: heard just now, progress past the data
        c.tracker.note("gw", T0 + 20 * S, heard_ns=time.time_ns())
    net, dealer = MemoryNetwork(2), LocalDealer(2)

    async def ticks(n: int) -> None:
        for _ in range(n):
            await asyncio.gather(
                *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
            )

    await ticks(4)
    assert [c.store.watermark() for c in coords] == [T0 + 10 * S] * 2  # waiting for 15-19
    for c in coords:  # the gateway has now been silent for longer than active_s
        c.tracker._heard["gw"] = time.time_ns() - 61 * S
    await ticks(4)
    assert [c.store.watermark() for c in coords] == [T0 + 20 * S] * 2
    docs = _released(coords)
    counts = [w["count"] for w in docs[T0 + 10 * S].windows]
    assert counts == [50]  # seconds 10-14 only
    assert [c.orphaned._value.get() for c in coords] == [5, 5]
    for c in coords:
        c.store.close()


class _NoWatermark:
    """A peer whose control message lacks the watermark."""

    async def exchange(self, round_id: int, outgoing: Any) -> dict[int, bytes]:
        return {1: b"{}"}


async def test_control_message_without_watermark_is_a_peer_error(tmp_path: Path) -> None:
    """A malformed control message ends the session with a PeerError, not a KeyError."""
    coords = _coordinators(tmp_path)
    with pytest.raises(PeerError, match="watermark"):
        await coords[0]._tick(cast(Transport, _NoWatermark()), LocalDealer(2).source(0))
    for c in coords:
        c.store.close()


def _outgoing(c: Coordinator) -> dict[int, tuple[ReleaseLayout, bytes]]:
    """Drain a party's outbox: epoch end -> (layout, share vector)."""
    out = {}
    while (item := c.store.next_outgoing()) is not None:
        doc = json.loads(item[1])
        out[item[0]] = (as_layout(doc["layout"]), base64.b64decode(doc["vector"]))
        c.store.delivered(*item)
    return out


async def test_shares_of_two_computations_of_an_epoch_never_combine(tmp_path: Path) -> None:
    """Party 1 lost its commit of the last epoch; party 0 had already sent its share.

    Both recompute it with fresh correlations. Party 0's first share plus
    party 1's second would reconstruct garbage with the right counts; the run
    id in the layout makes the output refuse that pair and accept the matching one.
    """
    streams = _streams(8)
    want = await _reference(streams)
    coords = _coordinators(tmp_path)
    _ingest(coords, streams)
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    await _run_until(coords, net, dealer, T0 + 30 * S)
    last, end = T0 + 20 * S, T0 + 30 * S
    first0 = _outgoing(coords[0])[end]
    _outgoing(coords[1])
    coords[1].store.rewind(last)
    await _run_until(coords, net, dealer, end)
    second0, second1 = _outgoing(coords[0])[end], _outgoing(coords[1])[end]
    policy = coords[0].cfg.service.policy
    with pytest.raises(AnalyticsError, match="different layouts"):
        try_complete(policy, 2, {0: first0, 1: second1})
    done = try_complete(policy, 2, {0: second0, 1: second1})
    assert done is not None
    assert done.rows == want[last]
    for c in coords:
        c.store.close()


async def test_three_parties_one_follower_missing_batches_of_a_gone_gateway(
    tmp_path: Path,
) -> None:
    """N = 3: party 2 never got seconds 15-19, parties 0 and 1 did; then the gateway is gone.

    While the gateway is live party 2 refuses and nobody computes (one refusal
    is enough); once it is gone party 2 reports the orphans, the leader leaves
    them out (party 1 does not count them as extra: they are in the skip list)
    and all three compute the epoch from what all three hold.
    """
    streams = _streams(9)
    coords = _coordinators(tmp_path, tracked=("gw",), n=3)
    _ingest(coords, streams, {0: range(20), 1: range(20), 2: range(15)})
    for c in coords:
        c.tracker.note("gw", T0 + 20 * S, heard_ns=time.time_ns())
    net, dealer = MemoryNetwork(3), LocalDealer(3)

    async def ticks(k: int) -> None:
        for _ in range(k):
            await asyncio.gather(
                *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
            )

    await ticks(4)
    assert [c.store.watermark() for c in coords] == [T0 + 10 * S] * 3
    for c in coords:
        c.tracker._heard["gw"] = time.time_ns() - 61 * S
    await ticks(4)
    assert [c.store.watermark() for c in coords] == [T0 + 20 * S] * 3
    docs = _released(coords)
    assert [w["count"] for w in docs[T0 + 10 * S].windows] == [50]
    assert [c.orphaned._value.get() for c in coords] == [5, 5, 5]
    for c in coords:
        c.store.close()


async def test_three_parties_a_follower_proposing_is_a_peer_error(tmp_path: Path) -> None:
    """Only party 0 proposes: a proposal from party 2 ends the round at party 1."""
    coords = _coordinators(tmp_path, n=3)
    prop = {"start": T0, "end": T0 + 10 * S, "batches": []}

    class _Mesh:
        async def exchange(self, round_id: int, outgoing: Any) -> dict[int, bytes]:
            if "wm" in json.loads(next(iter(outgoing.values()))):
                return {0: b'{"wm": 0}', 2: b'{"wm": 0}'}
            return {0: b'{"proposal": null}', 2: json.dumps({"proposal": prop}).encode()}

    with pytest.raises(PeerError, match="party 2 sent a proposal"):
        await coords[1]._tick(cast(Transport, _Mesh()), LocalDealer(3).source(1))
    assert coords[1].agreement.phase.value == "failed"
    for c in coords:
        c.store.close()


@pytest.mark.parametrize(("n", "refuser"), [(2, 1), (3, 1), (2, 0), (3, 0)])
async def test_a_gateway_one_party_refuses_does_not_stall_the_others(
    tmp_path: Path, n: int, refuser: int
) -> None:
    """Party ``refuser`` does not admit gateway B (pending there); A's windows are agreed.

    The refusing party never stored B's batches and never hears B's progress,
    while B is live everywhere. Its verdict names B, every party leaves B's
    batches out, and the released results are A's alone (the plaintext
    reference of A's readings). Fails on the code before this change: the
    refusing party lacked batches of a live gateway, so no epoch was agreed.
    """
    a, b = _streams(10, gateway="A"), _streams(11, gateway="B")
    want = await _reference(a)
    coords = _coordinators(tmp_path, tracked=("A", "B"), n=n, refusing={refuser: ("B",)})
    now = time.time_ns()
    for i, c in enumerate(coords):
        c.tracker.note("A", T0 + 30 * S, heard_ns=now)
        c.tracker.note("B", 0 if i == refuser else T0 + 30 * S, heard_ns=now)
    _ingest(coords, a, gateway="A")
    _ingest(coords, b, {refuser: range(0)}, gateway="B")
    net, dealer = MemoryNetwork(n), LocalDealer(n)
    await _run_until(coords, net, dealer, T0 + 30 * S)
    assert _released(coords) == want
    assert all(c.round.refused == {"B"} for c in coords)
    for c in coords:
        c.store.close()


def _mismatches(c: Coordinator) -> float:
    samples = [s for m in c.round.map_mismatch.collect() for s in m.samples]
    return float(next(s.value for s in samples if s.name.endswith("_total")))


async def test_an_epoch_routed_by_another_shard_map_version_is_refused_and_counted(
    tmp_path: Path,
) -> None:
    """Party 1 has not applied map version 2 (from 20 s on): that epoch waits, counted at both.

    The epochs before the boundary (both parties at version 1) are computed; the
    one after it is refused with the reason and counted in
    ``tecc_party_map_mismatch_total`` at the leader and the follower, until party 1
    holds the same version; then it is computed and equals the reference.
    """
    streams = _streams(8)
    want = await _reference(streams)
    boundary = T0 + 20 * S
    party1 = {"version": "1:aaaa"}

    def leader(start_ns: int) -> str:
        return "1:aaaa" if start_ns < boundary else "2:bbbb"

    def follower(start_ns: int) -> str:
        return "1:aaaa" if start_ns < boundary else party1["version"]

    coords = _coordinators(tmp_path, map_ids={0: leader, 1: follower})
    _ingest(coords, streams)
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    for _ in range(6):
        await asyncio.gather(
            *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
        )
    assert [c.store.watermark() for c in coords] == [boundary] * 2
    counts = [_mismatches(c) for c in coords]
    assert counts == [1, 1], counts  # once per epoch, however many rounds refused it
    party1["version"] = "2:bbbb"  # the operator made the same change at party 1
    await _run_until(coords, net, dealer, T0 + 30 * S)
    assert _released(coords) == want
    for c in coords:
        c.store.close()


async def test_a_follower_without_a_usable_map_refuses(tmp_path: Path) -> None:
    """A follower whose map record is unusable (None) computes nothing, and says why."""
    coords = _coordinators(tmp_path, map_ids={0: lambda _s: "1:aaaa", 1: lambda _s: None})
    _ingest(coords, _streams(9))
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    for _ in range(3):
        await asyncio.gather(
            *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
        )
    assert [c.store.watermark() for c in coords] == [0, 0]
    assert _mismatches(coords[1]) >= 1
    for c in coords:
        c.store.close()
