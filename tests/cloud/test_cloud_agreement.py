"""Two coordinators over an in-memory mesh: epoch agreement, computation and rewind."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.reference import ReferenceAnalytics, StreamReadings
from cloud_tecc.config import load_party
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.trust import AttestedDirectory
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork
from cloud_tecc.output.collector import try_complete
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.ingest import Ingestor
from cloud_tecc.party.store import ShareStore
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


def _coordinators(tmp: Path) -> list[Coordinator]:
    (tmp / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    out = []
    for i in (0, 1):
        ep = {"service_id": f"p{1 - i}", "url": "http://127.0.0.1:1", "mpc": "127.0.0.1:2"}
        doc = {
            "role": "party",
            "service_id": f"p{i}",
            "party": i,
            "state_dir": f"s{i}",
            "policy": "policy.yaml",
            "gateways": {},
            "peers": {1 - i: ep},
            "dealer": {"service_id": "d", "url": "http://127.0.0.1:3", "mpc": "127.0.0.1:4"},
            "output": {"service_id": "o", "url": "http://127.0.0.1:5"},
            "grace_s": 0.1,
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
            )
        )
    return out


def _ingest(coords: list[Coordinator], streams: list[StreamReadings]) -> None:
    gw = Ed25519PrivateKey.generate()
    keys = [generate_cluster_keypair_raw(KemSuite.X25519) for _ in range(2)]
    sealer = Sealer(
        gateway_id="gw",
        signing_key=gw,
        columns=(Column.VALUE, Column.SQUARE),
        clusters=[ClusterKey(i, KemSuite.X25519, k[1]) for i, k in enumerate(keys)],
    )
    ing = [
        Ingestor(
            party=i,
            n_parties=2,
            suite=KemSuite.X25519,
            private_key=load_private_key(KemSuite.X25519, keys[i][0]),
            gateway_keys={"gw": gw.public_key()},
        )
        for i in range(2)
    ]
    for sec in range(30):
        segs = []
        for s in streams:
            m = (s.timestamps_ns >= T0 + sec * S) & (s.timestamps_ns < T0 + (sec + 1) * S)
            segs.append(SensorSegment(s.sensor, s.timestamps_ns[m], s.values[m]))
        frames = sealer.seal(sec, segs, created_ns=T0)
        for i, c in enumerate(coords):
            c.store.insert_batches([ing[i].prepare(frames[i], received_ns=T0)])


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
        other = coords[1].store.next_outgoing()
        assert other is not None
        assert other[0] == item[0]
        docs = [json.loads(item[1]), json.loads(other[1])]
        pending = {d["party"]: (d["layout"], base64.b64decode(d["vector"])) for d in docs}
        done = try_complete(coords[0].cfg.service.policy, 2, pending)
        assert done is not None
        out[done.epoch_ns] = done.rows
        coords[0].store.delivered(*item)
        coords[1].store.delivered(*other)
    return out


async def test_agreement_computes_epochs_and_redoes_an_uncommitted_one(tmp_path: Path) -> None:
    """Both parties compute the same epochs; a party that lost its last commit is caught up."""
    rng = np.random.default_rng(4)
    ts = T0 + np.arange(300, dtype=np.int64) * (S // 10)
    streams = [StreamReadings("gw", f"s{k}", ts, 20 + rng.normal(0, 1, 300)) for k in range(2)]
    results = await ReferenceAnalytics(policy_from_mapping(POLICY)).run(streams)
    want = {r.epoch.start_ns: r.released for r in results}
    coords = _coordinators(tmp_path)
    _ingest(coords, streams)
    net, dealer = MemoryNetwork(2), LocalDealer(2)
    await _run_until(coords, net, dealer, T0 + 30 * S)
    got = _released(coords)
    assert got == want
    # Party 1 "crashed" before committing the last epoch: it lost that commit.
    coords[1].store.rewind(T0 + 20 * S)
    await _run_until(coords, net, dealer, T0 + 30 * S)
    again = _released(coords)
    assert again == {T0 + 20 * S: want[T0 + 20 * S]}
    for c in coords:
        c.store.close()
