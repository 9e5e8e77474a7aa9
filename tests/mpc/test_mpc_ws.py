"""WebSocket mesh and dealer service on loopback within one process: results, auth, loss."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.mpc import (
    AuthenticationError,
    CorrelationError,
    Kind,
    Party,
    PeerLostError,
    Plan,
    reveal,
    share,
)
from cloud_tecc.mpc.dealer_client import RemoteSource
from cloud_tecc.mpc.dealer_server import DealerService
from cloud_tecc.mpc.localmesh import free_port
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from tecc_contract.fixedpoint import FixedPoint

FP = FixedPoint()


def _configs(n: int, timeout: float = 10.0) -> tuple[list[Ed25519PrivateKey], list[MeshConfig]]:
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    addrs = {i: ("127.0.0.1", free_port()) for i in range(n)}
    cfgs = [
        MeshConfig(
            party=i,
            addresses=addrs,
            key=keys[i],
            peer_keys={j: keys[j].public_key() for j in range(n) if j != i},
            round_timeout=timeout,
            connect_timeout=timeout,
        )
        for i in range(n)
    ]
    return keys, cfgs


@pytest.mark.parametrize("n", [2, 3])
async def test_ws_mesh_with_dealer_service(n: int) -> None:
    """Comparison and fixed-point product over WebSockets, correlations from the dealer service."""
    keys, cfgs = _configs(n)
    dealer_key = Ed25519PrivateKey.generate()
    port = free_port()
    svc = DealerService(
        n=n,
        plan=Plan(comparisons=500, triples=300, truncs=300),
        key=dealer_key,
        party_keys={i: k.public_key() for i, k in enumerate(keys)},
        depth=2,
    )
    await svc.start("127.0.0.1", port)
    rng = np.random.default_rng(5)
    x, y = FP.encode(rng.uniform(-100, 100, 1000)), FP.encode(rng.uniform(-100, 100, 1000))
    xs, ys = share(x, n), share(y, n)
    sources = [
        await RemoteSource.connect(
            f"http://127.0.0.1:{port}/dealer",
            party=i,
            key=keys[i],
            dealer_key=dealer_key.public_key(),
            wait_s=10,
        )
        for i in range(n)
    ]
    transports = await asyncio.gather(*(WsTransport.start(c) for c in cfgs))
    try:
        parties = [Party(i, n, transports[i], sources[i]) for i in range(n)]

        async def fn(p: Party) -> np.ndarray[tuple[int], np.dtype[np.uint64]]:
            lt = await p.lt(xs[p.index], ys[p.index])  # 1000 > one batch: two fetches
            prod = await p.mul_fixed(xs[p.index][:300], ys[p.index][:300])
            return np.concatenate([lt, prod])

        out = reveal(await asyncio.gather(*(fn(p) for p in parties)))
        with pytest.raises(CorrelationError, match="plan has no"):
            await sources[0].take(Kind.DABIT, 1)
    finally:
        for t in transports:
            await t.close()
        for s in sources:
            await s.close()
        await svc.close()
    xi, yi = x.view(np.int64), y.view(np.int64)
    np.testing.assert_array_equal(out[:1000], (xi < yi).astype(np.uint64))
    err = out[1000:].view(np.int64) - ((xi[:300] * yi[:300]) >> 16)
    assert set(np.unique(err).tolist()) <= {0, 1}
    assert svc.stats.batches >= 2


async def test_wrong_key_is_refused() -> None:
    """A party presenting a key its peer does not know cannot join the mesh."""
    _, cfgs = _configs(2, timeout=2.0)
    impostor = MeshConfig(
        party=1,
        addresses=cfgs[1].addresses,
        key=Ed25519PrivateKey.generate(),
        peer_keys=cfgs[1].peer_keys,
        round_timeout=2.0,
        connect_timeout=2.0,
    )
    results = await asyncio.gather(
        WsTransport.start(cfgs[0]), WsTransport.start(impostor), return_exceptions=True
    )
    assert isinstance(results[1], AuthenticationError)
    assert isinstance(results[0], (AuthenticationError, PeerLostError))
    for r in results:
        if isinstance(r, WsTransport):
            await r.close()


async def test_peer_that_leaves_is_peer_lost() -> None:
    """When a peer closes its transport mid-protocol, the other raises PeerLostError."""
    _, cfgs = _configs(2)
    t0, t1 = await asyncio.gather(*(WsTransport.start(c) for c in cfgs))
    dealer = LocalDealer(2)
    p0 = Party(0, 2, t0, dealer.source(0))
    await t1.close()
    with pytest.raises(PeerLostError):
        await p0.mul(np.zeros(4, np.uint64), np.zeros(4, np.uint64))
    await t0.close()


async def test_silent_peer_times_out() -> None:
    """A connected peer that sends nothing makes the round time out with PeerLostError."""
    _, cfgs = _configs(2, timeout=0.5)
    t0, t1 = await asyncio.gather(*(WsTransport.start(c) for c in cfgs))
    p0 = Party(0, 2, t0, LocalDealer(2).source(0))
    with pytest.raises(PeerLostError, match="within"):
        await p0.mul(np.zeros(4, np.uint64), np.zeros(4, np.uint64))
    await t0.close()
    await t1.close()
