"""One MPC session per shard: worker k of a party never pairs with worker j != k.

All shard workers of a party run under the party's one attested key, so the
key alone cannot keep shards apart: the session label (shard k of K) is in
every handshake name, hence in the signed transcript, of the mesh and the
dealer links.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.mpc import AuthenticationError, Kind, PeerLostError, Plan
from cloud_tecc.mpc.dealer_client import DealerLink
from cloud_tecc.mpc.dealer_server import DealerService
from cloud_tecc.mpc.handshake import party_index, party_name, shard_session
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from demo.services import free_port

KEYS = [Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()]  # one key per party


def _mesh(party: int, session: str, addrs: dict[int, tuple[str, int]]) -> MeshConfig:
    return MeshConfig(
        party=party,
        addresses=addrs,
        key=KEYS[party],
        peer_keys={1 - party: KEYS[1 - party].public_key()},
        round_timeout=3.0,
        connect_timeout=3.0,
        session=session,
    )


def test_session_names() -> None:
    """One shard keeps today's names; K > 1 qualifies them and the index still parses."""
    assert shard_session(0, 1) == ""
    assert party_name(1, shard_session(0, 1)) == "party-1"
    name = party_name(3, shard_session(2, 4))
    assert name == "party-3/shard-2-of-4"
    assert party_index(name) == 3
    assert shard_session(0, 2) != shard_session(0, 4)  # K is bound too


async def _pair(s0: str, s1: str) -> list[object]:
    addrs = {i: ("127.0.0.1", free_port()) for i in range(2)}
    results = await asyncio.gather(
        WsTransport.start(_mesh(0, s0, addrs)),
        WsTransport.start(_mesh(1, s1, addrs)),
        return_exceptions=True,
    )
    for r in results:
        if isinstance(r, WsTransport):
            await r.close()
    return list(results)


async def test_workers_of_one_shard_pair() -> None:
    """Worker 1 of both parties forms its session (the same keys as below)."""
    session = shard_session(1, 2)
    results = await _pair(session, session)
    assert all(isinstance(r, WsTransport) for r in results), results


async def test_worker_never_pairs_with_another_shard() -> None:
    """Worker 0 of party 0 and worker 1 of party 1 (same party keys) refuse each other."""
    results = await _pair(shard_session(0, 2), shard_session(1, 2))
    assert not any(isinstance(r, WsTransport) for r in results)
    assert any(isinstance(r, AuthenticationError) for r in results), results
    assert all(isinstance(r, (AuthenticationError, PeerLostError)) for r in results), results


async def _dealer_link(dealer_session: str, party_session: str) -> None:
    dealer_key = Ed25519PrivateKey.generate()
    port = free_port()
    svc = DealerService(
        n=2,
        plan=Plan(comparisons=10, triples=10, truncs=10),
        key=dealer_key,
        party_keys={i: k.public_key() for i, k in enumerate(KEYS)},
        depth=1,
        session=dealer_session,
    )
    await svc.start("127.0.0.1", port)
    try:
        link = await DealerLink.connect(
            f"http://127.0.0.1:{port}/dealer",
            party=0,
            key=KEYS[0],
            dealer_key=dealer_key.public_key(),
            wait_s=3,
            mpc_session=party_session,
        )
        try:
            await link.take(Kind.TRIPLE, 1)
        finally:
            await link.close()
    finally:
        await svc.close()


async def test_dealer_serves_its_own_shard() -> None:
    """Shard 1's worker takes correlations from shard 1's dealer."""
    await _dealer_link(shard_session(1, 2), shard_session(1, 2))


async def test_dealer_of_another_shard_is_refused() -> None:
    """Shard 0's worker cannot use shard 1's dealer (nor the reverse: names differ)."""
    with pytest.raises(AuthenticationError):
        await _dealer_link(shard_session(1, 2), shard_session(0, 2))


async def test_refused_first_address_is_left_for_the_next() -> None:
    """A peer listed as (dead worker, its standby that now owns the shard) pairs at once.

    Party 1's shard has two workers; party 0 dials the first (nobody listens: it
    died) and then the second (the new owner). Fails on the code before this
    change: the refused first address was retried for ``attempt_s`` before the
    second was tried, longer than party 1 waits for the connection back.
    """
    dead = ("127.0.0.1", free_port())
    addrs = {i: ("127.0.0.1", free_port()) for i in range(2)}
    first = dataclasses.replace(
        _mesh(0, "", {0: addrs[0], 1: dead}),
        alternates={1: (addrs[1],)},
        attempt_s=5.0,
        connect_timeout=8.0,
    )
    # party 1 waits 2 s for party 0's connection: far less than attempt_s
    second = dataclasses.replace(_mesh(1, "", addrs), connect_timeout=2.0)
    results = await asyncio.gather(
        WsTransport.start(first), WsTransport.start(second), return_exceptions=True
    )
    for r in results:
        if isinstance(r, WsTransport):
            await r.close()
    assert all(isinstance(r, WsTransport) for r in results), results
