"""WebSocket mesh and dealer service on loopback within one process: results, auth, loss."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

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
from cloud_tecc.mpc.dealer_client import GROUP, DealerLink
from cloud_tecc.mpc.dealer_server import DealerService
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from demo.services import free_port
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
        await DealerLink.connect(
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


def _tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throw-away CA and a certificate for 127.0.0.1: (server context, client context)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tecc test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    return server, client


async def test_tls_mesh_and_dealer(tmp_path: Path) -> None:
    """The mesh and the dealer link run over TLS (wss://) with the same results."""
    server_tls, client_tls = _tls_contexts(tmp_path)
    keys, plain = _configs(2)
    cfgs = [dataclasses.replace(c, server_tls=server_tls, client_tls=client_tls) for c in plain]
    dealer_key = Ed25519PrivateKey.generate()
    port = free_port()
    svc = DealerService(
        n=2,
        plan=Plan(comparisons=256),
        key=dealer_key,
        party_keys={i: k.public_key() for i, k in enumerate(keys)},
    )
    await svc.start("127.0.0.1", port, tls=server_tls)
    sources = [
        await DealerLink.connect(
            f"https://127.0.0.1:{port}/dealer",
            party=i,
            key=keys[i],
            dealer_key=dealer_key.public_key(),
            wait_s=10,
            tls=client_tls,
        )
        for i in range(2)
    ]
    transports = await asyncio.gather(*(WsTransport.start(c) for c in cfgs))
    x = FP.encode(np.linspace(-3, 3, 256))
    xs = share(x, 2)
    try:
        parties = [Party(i, 2, transports[i], sources[i]) for i in range(2)]
        out = reveal(await asyncio.gather(*(p.lt_public(xs[p.index], 0) for p in parties)))
    finally:
        for t in transports:
            await t.close()
        for s in sources:
            await s.close()
        await svc.close()
    np.testing.assert_array_equal(out, (x.view(np.int64) < 0).astype(np.uint64))


async def test_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    """A client that does not trust the server's CA refuses to connect."""
    server_tls, _ = _tls_contexts(tmp_path)
    _, plain = _configs(2, timeout=3.0)
    other = ssl.create_default_context()  # system roots only
    cfgs = [dataclasses.replace(c, server_tls=server_tls, client_tls=other) for c in plain]
    results = await asyncio.gather(*(WsTransport.start(c) for c in cfgs), return_exceptions=True)
    assert all(isinstance(r, (AuthenticationError, PeerLostError)) for r in results), results
    assert any(isinstance(r, AuthenticationError) for r in results)


async def _dealer_for_two(
    cls: type[DealerService], depth: int
) -> tuple[DealerService, Callable[[int], Awaitable[DealerLink]]]:
    """A started dealer service (``cls``) of triples for two parties, and how party i links."""
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    dealer_key = Ed25519PrivateKey.generate()
    port = free_port()
    svc = cls(
        n=2,
        plan=Plan(triples=64),
        key=dealer_key,
        party_keys={i: k.public_key() for i, k in enumerate(keys)},
        depth=depth,
    )
    await svc.start("127.0.0.1", port)

    async def connect(i: int) -> DealerLink:
        return await DealerLink.connect(
            f"http://127.0.0.1:{port}/dealer",
            party=i,
            key=keys[i],
            dealer_key=dealer_key.public_key(),
            wait_s=10,
        )

    return svc, connect


async def test_dealer_resumes_a_reconnecting_party() -> None:
    """A party that reconnects resumes past what it used; alignment lines batches up."""
    svc, connect = await _dealer_for_two(DealerService, depth=1)
    try:
        first = await connect(0)
        await first.prefetch(1)  # party 0 used batch 0, then restarts
        first.store.take(Kind.TRIPLE, 64)
        await first.close()
        again, other = await connect(0), await connect(1)
        target = max(await again.next_seq(), await other.next_seq())
        assert target >= 1  # the restarted party resumes after what it had
        await again.align(target)
        await other.align(target)
        await again.prefetch(1)
        await other.prefetch(1)
        t0 = again.store.take(Kind.TRIPLE, 64).fields
        t1 = other.store.take(Kind.TRIPLE, 64).fields
        await again.close()
        await other.close()
    finally:
        await svc.close()
    a, b, c = (t0[k] + t1[k] for k in "abc")
    np.testing.assert_array_equal(c, a * b)


class _StalledDealer(DealerService):
    """Serves each party its first group of batches, then waits for ever for the next:
    a dealer that cannot generate more until another party (gone) takes its part."""

    async def _next_frame(self, party: int) -> tuple[int, bytes]:
        if self._cursor[party] >= GROUP:
            await asyncio.Event().wait()
        return await super()._next_frame(party)


async def test_closing_a_dealer_link_does_not_wait_for_a_stalled_dealer() -> None:
    """A party leaves its dealer link at once while the dealer waits for another party.

    The link has read its first group ahead (its reader now waits for the session's
    alignment, not on the socket) and asked for more; the dealer's handler waits for
    a batch it cannot generate, reads nothing and never answers the closing
    handshake. Fails on the code before this change: the close waited aiohttp's
    10 s close timeout, and a session whose peer died started again only after it
    (the HA soak's 10 s takeovers: "teardown took 10.0 s (... dealer link 10.0 s)")."""
    svc, connect = await _dealer_for_two(_StalledDealer, depth=4)
    links = [await connect(0), await connect(1)]
    try:
        async with asyncio.timeout(10):
            while min(svc.stats.delivered.get(i, 0) for i in (0, 1)) < GROUP:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # both handlers now wait for a batch that never comes
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with asyncio.timeout(5):  # aiohttp's own close timeout is 10 s
            await links[1].close()
        assert loop.time() - t0 < 5
    finally:
        await links[0].close()
        await svc.close()
