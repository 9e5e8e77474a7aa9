"""Link limits and the hybrid suite: bounded frames, handshake deadline, pending cap, PQ links."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import aiohttp
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.mpc import AuthenticationError, PeerLostError, Plan, wslink
from cloud_tecc.mpc import handshake as hs
from cloud_tecc.mpc.bundle_wire import decode_batch
from cloud_tecc.mpc.dealer_server import DealerService
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from demo.services import free_port

PQ = hs.LinkSuite.MLKEM768_X25519


def _configs(suite: hs.LinkSuite = hs.LinkSuite.X25519) -> list[MeshConfig]:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    addrs = {i: ("127.0.0.1", free_port()) for i in range(2)}
    return [
        MeshConfig(
            party=i,
            addresses=addrs,
            key=keys[i],
            peer_keys={1 - i: keys[1 - i].public_key()},
            round_timeout=10,
            connect_timeout=10,
            suite=suite,
        )
        for i in range(2)
    ]


async def _dealer(**kwargs: object) -> tuple[DealerService, int]:
    svc = DealerService(
        n=2,
        plan=Plan(triples=10),
        key=Ed25519PrivateKey.generate(),
        party_keys={i: Ed25519PrivateKey.generate().public_key() for i in range(2)},
        **kwargs,  # type: ignore[arg-type]
    )
    port = free_port()
    await svc.start("127.0.0.1", port)
    return svc, port


@pytest.mark.parametrize("suite", list(hs.LinkSuite))
async def test_large_round_travels_in_bounded_frames(suite: hs.LinkSuite) -> None:
    """A 5 MiB round arrives whole although no frame exceeds the 1 MiB cap (both suites).

    Fails on the code before this change for the PQ suite (there was none) and
    would need unbounded frames for the large round.
    """
    cfgs = _configs(suite)
    t0, t1 = await asyncio.gather(*(WsTransport.start(c) for c in cfgs))
    try:
        big = np.random.default_rng(1).integers(0, 2**63, 5 * 2**17, dtype=np.uint64).tobytes()
        assert len(big) > 4 * wslink.MAX_FRAME
        got = await asyncio.gather(t0.exchange(7, {1: big}), t1.exchange(7, {0: b"small"}))
        assert bytes(got[1][0]) == big
        assert bytes(got[0][1]) == b"small"
        got = await asyncio.gather(t0.exchange(8, {1: b""}), t1.exchange(8, {0: big[:10]}))
        assert bytes(got[1][0]) == b""
        assert bytes(got[0][1]) == big[:10]
    finally:
        await asyncio.gather(t0.close(), t1.close())


async def test_link_suites_must_match() -> None:
    """A party on the hybrid suite refuses a peer on X25519 alone, naming the setting."""
    cfgs = _configs(PQ)
    plain = dataclasses.replace(cfgs[1], suite=hs.LinkSuite.X25519)
    results = await asyncio.gather(
        WsTransport.start(cfgs[0]), WsTransport.start(plain), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    for r in results:
        if isinstance(r, WsTransport):
            await r.close()
    assert errors
    assert any(isinstance(e, AuthenticationError) and "suite" in str(e) for e in errors)


def test_hybrid_handshake_binds_the_kem() -> None:
    """The hybrid AUTH carries an ML-KEM ciphertext; a changed ciphertext fails the signature."""
    c, s = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    eph, kem = X25519PrivateKey.generate(), MLKEM768PrivateKey.generate()
    hello = hs.hello("dealer", b"n" * 32, eph, kem)
    assert len(hello) > hs.KEM_PK
    auth, state = hs.client_auth(
        hello,
        name="party-0",
        key=c,
        expected_server="dealer",
        nonce_c=b"c" * 32,
        eph=X25519PrivateKey.generate(),
        suite=PQ,
    )
    known = {"party-0": c.public_key()}
    at = len(hs.MAGIC) + hs.NONCE + hs.EPH
    bad = bytearray(auth)
    bad[at + 5] ^= 1
    with pytest.raises(AuthenticationError):
        hs.server_accept(
            bytes(bad), name="dealer", key=s, nonce_s=b"n" * 32, eph=eph, known=known, kem=kem
        )
    _, accept, server = hs.server_accept(
        auth, name="dealer", key=s, nonce_s=b"n" * 32, eph=eph, known=known, kem=kem
    )
    client = hs.client_finish(accept, state, s.public_key())
    assert client.open(server.seal(b"mask")) == b"mask"


@pytest.mark.parametrize("size", [64 << 10, 8 << 20])
async def test_oversized_frame_before_authentication_is_refused(size: int) -> None:
    """An unauthenticated frame over 4 KiB (64 KiB, 8 MiB) closes the link with 1009.

    Fails on the code before this change: ``max_msg_size=0`` took the frame whole.
    """
    svc, port = await _dealer()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/dealer", max_msg_size=0) as ws,
        ):
            await ws.receive(timeout=5)  # HELLO
            try:
                await ws.send_bytes(b"\0" * size)
            except ConnectionError:
                cut = True  # the server dropped the link while the frame was still arriving
            else:
                msg = await ws.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                cut = ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            assert cut
    finally:
        await svc.close()


async def test_silent_peer_is_dropped_after_the_handshake_deadline() -> None:
    """A peer that upgrades and then says nothing is closed after ``handshake_s``.

    Fails on the code before this change: the server waited ``wait_s`` (60 s).
    """
    svc, port = await _dealer(handshake_s=0.3)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/dealer") as ws,
        ):
            await ws.receive(timeout=5)  # HELLO
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert svc.gate.failed == 1
    finally:
        await svc.close()


async def test_pending_upgrades_are_capped() -> None:
    """Past MAX_PENDING unauthenticated upgrades the listener answers 503; later ones pass.

    Fails on the code before this change (every upgrade was taken).
    """
    svc, port = await _dealer(handshake_s=2.0)
    url = f"http://127.0.0.1:{port}/dealer"
    try:
        async with aiohttp.ClientSession() as session:
            held = [await session.ws_connect(url) for _ in range(wslink.MAX_PENDING)]
            for ws in held:
                await ws.receive(timeout=5)  # each got its HELLO and holds a slot
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(url)
            assert info.value.status == 503
            assert svc.gate.refused == 1
            for ws in held:
                await ws.close()
            await asyncio.sleep(0.1)
            assert svc.gate.pending == 0
            async with session.ws_connect(url) as ws:
                assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY
    finally:
        await svc.close()


async def test_dealer_cuts_off_a_revoked_party_until_admitted_again() -> None:
    """``revoke`` (failed re-attestation) closes the party's link and refuses it; ``admit`` lets
    it back. Fails on the code before this change (no revocation existed)."""
    party_key, dealer_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    svc = DealerService(
        n=2,
        plan=Plan(triples=10),
        key=dealer_key,
        party_keys={0: party_key.public_key(), 1: Ed25519PrivateKey.generate().public_key()},
    )
    port = free_port()
    await svc.start("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/dealer"
    kw = {"party": 0, "key": party_key, "dealer_key": dealer_key.public_key(), "wait_s": 2.0}
    try:
        session, link = await wslink.connect_dealer(url, **kw)  # type: ignore[arg-type]
        await link.send(b"NEXT")
        assert await link.receive(5, "a batch")
        svc.revoke(0)
        with contextlib.suppress(ConnectionError):
            await link.send(b"NEXT")
        with pytest.raises(PeerLostError):
            await link.receive(5, "a batch")
        await session.close()
        with pytest.raises(AuthenticationError):
            await wslink.connect_dealer(url, **kw)  # type: ignore[arg-type]
        svc.admit(0, party_key.public_key())
        session, link = await wslink.connect_dealer(url, **kw)  # type: ignore[arg-type]
        await link.send(b"NEXT")
        assert await link.receive(5, "a batch")
        await link.close()
        await session.close()
    finally:
        await svc.close()


@pytest.mark.parametrize("bad", [b"", b"NEXT\0", b'{"next": true}', b"MORE"])
async def test_bad_dealer_request_ends_only_that_link_and_is_counted(bad: bytes) -> None:
    """A request that is not ``NEXT`` closes that party's link and is counted; the party
    reconnects at its cursor and the other party is served throughout. Fails on the code
    before this change (bad requests were not counted: no ``refused_requests``)."""
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    dealer_key = Ed25519PrivateKey.generate()
    svc = DealerService(
        n=2,
        plan=Plan(triples=10),
        key=dealer_key,
        party_keys={i: k.public_key() for i, k in enumerate(keys)},
    )
    port = free_port()
    await svc.start("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/dealer"

    async def connect(i: int) -> tuple[aiohttp.ClientSession, wslink.Link]:
        return await wslink.connect_dealer(
            url, party=i, key=keys[i], dealer_key=dealer_key.public_key(), wait_s=5.0
        )

    try:
        s0, bad_link = await connect(0)
        s1, good = await connect(1)
        await bad_link.send(bad)
        with pytest.raises(PeerLostError):
            await bad_link.receive(5, "a batch")
        assert svc.stats.refused_requests == 1
        await good.send(b"NEXT")
        assert decode_batch(await good.receive(5, "a batch"), party=1)[0] == 0
        await s0.close()
        s0, again = await connect(0)
        await again.send(b"NEXT")
        assert decode_batch(await again.receive(5, "a batch"), party=0)[0] == 0
        for link in (again, good):
            await link.close()
        for session in (s0, s1):
            await session.close()
    finally:
        await svc.close()


def test_hostile_hybrid_handshake_bytes_raise_only_authentication_errors() -> None:
    """Truncated, oversized, random or bit-flipped hybrid messages: AuthenticationError only."""
    rng = np.random.default_rng(3)
    c, s = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    eph, kem = X25519PrivateKey.generate(), MLKEM768PrivateKey.generate()
    hello = hs.hello("dealer", b"n" * 32, eph, kem)
    auth, _ = hs.client_auth(
        hello,
        name="party-0",
        key=c,
        expected_server="dealer",
        nonce_c=b"c" * 32,
        eph=X25519PrivateKey.generate(),
        suite=PQ,
    )
    known = {"party-0": c.public_key()}
    for seed in (hello, auth):
        cases = [seed[:n] for n in (0, 4, 5, 40, 200, len(seed) - 1)]
        cases += [seed + rng.bytes(hs.MAX_MESSAGE), rng.bytes(len(seed))]
        for _ in range(50):
            flipped = bytearray(seed)
            flipped[int(rng.integers(len(seed)))] ^= 1 << int(rng.integers(8))
            cases.append(bytes(flipped))
        for body in cases:
            if seed is hello:  # a flip in the nonce or the keys may pass; nothing else may escape
                with contextlib.suppress(AuthenticationError):
                    hs.client_auth(
                        body,
                        name="party-0",
                        key=c,
                        expected_server="dealer",
                        nonce_c=b"c" * 32,
                        eph=X25519PrivateKey.generate(),
                        suite=PQ,
                    )
                continue
            with pytest.raises(AuthenticationError):  # every change breaks the signature
                hs.server_accept(
                    body, name="dealer", key=s, nonce_s=b"n" * 32, eph=eph, known=known, kem=kem
                )
