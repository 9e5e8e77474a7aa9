"""A party's new MPC session never pairs with the peer's abandoned session.

Regression: after a SIGKILL and restart under load, a party's mesh could come
up with its outgoing link to the peer's previous transport and its incoming
link from the peer's new one. Each side then consumed the other's stale
messages and close, and their sessions stayed offset forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.mpc import Party, PeerLostError, reveal, share
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from demo.services import free_port


def _listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (Linux /proc; state 0A is LISTEN)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _configs() -> list[MeshConfig]:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    addrs = {i: ("127.0.0.1", free_port()) for i in range(2)}
    return [
        MeshConfig(
            party=i,
            addresses=addrs,
            key=keys[i],
            peer_keys={1 - i: keys[1 - i].public_key()},
            round_timeout=5.0,
            connect_timeout=5.0,
        )
        for i in range(2)
    ]


async def test_mesh_half_connected_to_an_abandoned_peer_session_is_refused() -> None:
    """Party 0 reaches party 1's old transport, which dies; party 1's new one connects back."""
    c0, c1 = _configs()
    # Party 1's old session listens but can never reach party 0, and gives up.
    nowhere = dataclasses.replace(
        c1,
        addresses={0: ("127.0.0.1", free_port()), 1: c1.addresses[1]},
        connect_timeout=0.5,
    )
    old1 = asyncio.create_task(WsTransport.start(nowhere))
    async with asyncio.timeout(10):  # until the old session listens (no probe connection)
        while not _listening(c1.addresses[1][1]):
            await asyncio.sleep(0.01)
    t0 = asyncio.create_task(WsTransport.start(c0))  # connects to the old session of party 1
    with pytest.raises(PeerLostError):
        await old1
    # Party 1's new session connects to party 0, whose link to the old session is gone.
    new1 = asyncio.create_task(WsTransport.start(dataclasses.replace(c1, connect_timeout=1.0)))
    done = await asyncio.gather(t0, new1, return_exceptions=True)
    assert isinstance(done[0], PeerLostError), done[0]
    for r in done:
        if isinstance(r, WsTransport):
            await r.close()
    # Both retry: the next sessions pair up and compute.
    m0, m1 = await asyncio.gather(WsTransport.start(c0), WsTransport.start(c1))
    try:
        dealer = LocalDealer(2)
        parties = [Party(i, 2, m, dealer.source(i)) for i, m in enumerate((m0, m1))]
        x = share(np.arange(4, dtype=np.uint64), 2)
        y = share(np.full(4, 3, dtype=np.uint64), 2)
        z = await asyncio.gather(*(p.mul(x[i], y[i]) for i, p in enumerate(parties)))
        assert (reveal(list(z)) == np.arange(4, dtype=np.uint64) * 3).all()
    finally:
        await m0.close()
        await m1.close()


async def test_the_mesh_tells_when_a_peer_has_begun_a_round() -> None:
    """``has_incoming``: what ends a party's idle wait (cloud_tecc/party/pacing.py)."""
    c0, c1 = _configs()
    m0, m1 = await asyncio.gather(WsTransport.start(c0), WsTransport.start(c1))
    try:
        assert not m0.has_incoming()
        assert not m1.has_incoming()
        first = asyncio.create_task(m1.exchange(0, {0: b"wm"}))  # party 1 begins a round
        for _ in range(200):
            if m0.has_incoming():
                break
            await asyncio.sleep(0.01)
        assert m0.has_incoming()
        got = await m0.exchange(0, {1: b"wm"})  # party 0 joins; the message is consumed
        assert bytes(got[1]) == b"wm"
        assert bytes((await first)[0]) == b"wm"
        assert not m0.has_incoming()
    finally:
        await m0.close()
        await m1.close()
