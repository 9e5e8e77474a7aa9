"""MPC link cost by key agreement: X25519 alone vs hybrid ML-KEM-768 + X25519.

Phase 3 of ``python -m bench.mpc``. Two transports (``WsTransport``) on
loopback in this process: the time to form the mesh (TCP, WebSocket upgrade,
authenticated handshake, session tokens) and the time of one exchange round
of a small (16 KiB) and a large (4 MiB, chunked into 1 MiB frames) payload per
suite, plus the handshake's cryptography alone (sans-IO, no network). Figures
are best-of and reported with the hybrid/X25519 ratio.

The per-byte cost of a link (what each added peer costs a party, issue 16):
``link_cpu_ns_per_byte`` is the CPU (``time.process_time``, both ends of
one link in this process) of exchange rounds of :data:`ROUND_BYTES` each way,
per byte carried (each byte is sealed, sent, received and opened);
``link_aead_ns_per_byte`` is the channel's AES-256-GCM seal + open alone on
the same bytes (``Channel.seal_into`` / ``open_into`` into reused buffers),
and ``link_aead_share`` their ratio; the rest is the kernel's loopback
copies, aiohttp's frame parsing and reassembly, and the event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.mpc import handshake as hs
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from demo.services import free_port


def _handshake_crypto(suite: hs.LinkSuite) -> float:
    """One handshake's cryptography (both sides), no I/O."""
    c, s = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    known = {"party-1": c.public_key()}
    t0 = time.perf_counter()
    eph = X25519PrivateKey.generate()
    kem = MLKEM768PrivateKey.generate() if suite is hs.LinkSuite.MLKEM768_X25519 else None
    nonce = os.urandom(hs.NONCE)
    hello = hs.hello("party-0", nonce, eph, kem)
    auth, state = hs.client_auth(
        hello,
        name="party-1",
        key=c,
        expected_server="party-0",
        nonce_c=os.urandom(hs.NONCE),
        eph=X25519PrivateKey.generate(),
        suite=suite,
    )
    _, accept, _ = hs.server_accept(
        auth, name="party-0", key=s, nonce_s=nonce, eph=eph, known=known, kem=kem
    )
    hs.client_finish(accept, state, s.public_key())
    return time.perf_counter() - t0


def _pair_configs(suite: hs.LinkSuite = hs.LinkSuite.X25519) -> list[MeshConfig]:
    """Mesh configs of two parties on loopback with fresh keys."""
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    addrs = {i: ("127.0.0.1", free_port()) for i in range(2)}
    return [
        MeshConfig(
            party=i,
            addresses=addrs,
            key=keys[i],
            peer_keys={1 - i: keys[1 - i].public_key()},
            suite=suite,
        )
        for i in range(2)
    ]


async def _mesh(suite: hs.LinkSuite, rounds: int) -> dict[str, float]:
    cfgs = _pair_configs(suite)
    t0 = time.perf_counter()
    t = await asyncio.gather(*(WsTransport.start(c) for c in cfgs))
    formed = time.perf_counter() - t0
    out = {"mesh_form_s": formed}
    try:
        for name, size in (("small", 16 << 10), ("large", 4 << 20)):
            payload = os.urandom(size)
            best = float("inf")
            for r in range(rounds):
                t0 = time.perf_counter()
                await asyncio.gather(t[0].exchange(r, {1: payload}), t[1].exchange(r, {0: payload}))
                best = min(best, time.perf_counter() - t0)
            out[f"round_{name}_s"] = best
            await asyncio.gather(t[0].exchange(10**6, {1: b""}), t[1].exchange(10**6, {0: b""}))
    finally:
        await asyncio.gather(t[0].close(), t[1].close())
    return out


#: One round message per direction in the per-byte figure: the order of an
#: analytics round of a 100,000-reading epoch (≈ 185 bytes per reading per
#: peer over 66 rounds).
ROUND_BYTES = 256 << 10


async def _link_cpu_ns_per_byte(rounds: int) -> float:
    """CPU per byte carried by one link (both ends), best of a few batches of rounds."""
    t = await asyncio.gather(*(WsTransport.start(c) for c in _pair_configs()))
    payload = os.urandom(ROUND_BYTES)
    best = float("inf")
    try:
        r = 0
        for _ in range(5):
            c0 = time.process_time()
            for _ in range(rounds):
                await asyncio.gather(t[0].exchange(r, {1: payload}), t[1].exchange(r, {0: payload}))
                r += 1
            best = min(best, (time.process_time() - c0) / (rounds * 2 * ROUND_BYTES))
    finally:
        await asyncio.gather(t[0].close(), t[1].close())
    return best * 1e9


def _aead_ns_per_byte(rounds: int) -> float:
    """The link channel's AES-256-GCM seal + open of ROUND_BYTES, per byte, best of 5."""
    key = os.urandom(32)
    tx = hs.Channel(key, key)
    rx = hs.Channel(key, key)
    data = memoryview(os.urandom(ROUND_BYTES))
    sealed = memoryview(bytearray(ROUND_BYTES + hs.TAG))
    opened = memoryview(bytearray(ROUND_BYTES))
    best = float("inf")
    for _ in range(5):
        c0 = time.process_time()
        for _ in range(rounds):
            tx.seal_into(data, b"h", sealed)
            rx.open_into(sealed, b"h", opened)
        best = min(best, (time.process_time() - c0) / (rounds * ROUND_BYTES))
    return best * 1e9


def bench_links(quick: bool) -> dict[str, Any]:
    """Phase 3: link handshake and round cost per suite, with hybrid/X25519 ratios."""
    meshes, rounds = (4, 8) if quick else (8, 20)
    out: dict[str, Any] = {}
    tags = {hs.LinkSuite.X25519: "x25519", hs.LinkSuite.MLKEM768_X25519: "hybrid"}
    crypto: dict[str, list[float]] = {t: [] for t in tags.values()}
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in tags.values()}
    for _ in range(meshes):  # suites alternate, so load and warm-up hit both alike
        for suite, tag in tags.items():
            crypto[tag] += [_handshake_crypto(suite) for _ in range(20 if quick else 50)]
            runs[tag].append(asyncio.run(_mesh(suite, rounds)))
    for tag in tags.values():
        out[f"link_{tag}_handshake_crypto_ms"] = min(crypto[tag]) * 1e3
        for key in ("mesh_form_s", "round_small_s", "round_large_s"):
            out[f"link_{tag}_{key.removesuffix('_s')}_ms"] = min(r[key] for r in runs[tag]) * 1e3
    for key in ("handshake_crypto", "mesh_form", "round_small", "round_large"):
        out[f"ratio_link_hybrid_vs_x25519_{key}"] = (
            out[f"link_hybrid_{key}_ms"] / out[f"link_x25519_{key}_ms"]
        )
    per_byte_rounds = 20 if quick else 100
    out["link_cpu_ns_per_byte"] = asyncio.run(_link_cpu_ns_per_byte(per_byte_rounds))
    out["link_aead_ns_per_byte"] = _aead_ns_per_byte(per_byte_rounds)
    out["link_aead_share"] = out["link_aead_ns_per_byte"] / out["link_cpu_ns_per_byte"]
    return out
