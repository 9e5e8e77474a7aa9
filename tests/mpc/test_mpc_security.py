"""What parties see: uniform messages, no plaintext on the wire, dealer relations, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import reduce
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.mpc import (
    CorrelationError,
    Kind,
    Party,
    PeerLostError,
    Plan,
    ProtocolError,
    reconstruct_output,
    reveal,
    run_parties,
    seeded_random_bytes,
    share,
)
from cloud_tecc.mpc.bits import bitrev64, pack, unpack
from cloud_tecc.mpc.correlations import CMP_LEVELS, Bundle, materialise
from cloud_tecc.mpc.dealer import deal
from cloud_tecc.mpc.transport import Payload, Transport
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS, FixedPoint
from tecc_contract.ring import RingArray

FP = FixedPoint()
#: χ² critical value for 255 degrees of freedom at p = 0.001.
CHI2_255_P001 = 330.5


class Recorder:
    """A transport decorator that keeps every message its party receives."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.received: list[bytes] = []

    async def exchange(self, round_id: int, outgoing: Mapping[int, Payload]) -> dict[int, Payload]:
        """Forward and record."""
        got = await self.inner.exchange(round_id, outgoing)
        self.received.extend(bytes(v) for v in got.values())
        return got

    async def close(self) -> None:
        """Forward."""
        await self.inner.close()


def _run_recorded(n: int, x: RingArray, y: RingArray) -> tuple[list[Recorder], RingArray]:
    recorders: list[Recorder] = []

    def wrap(_i: int, t: Transport) -> Transport:
        recorders.append(Recorder(t))
        return recorders[-1]

    xs = share(x, n, random_bytes=seeded_random_bytes(b"x" * 32))
    ys = share(y, n, random_bytes=seeded_random_bytes(b"y" * 32))

    async def fn(p: Party) -> RingArray:
        i = p.index
        s = await p.lt(xs[i], ys[i])
        m = await p.mul_fixed(xs[i], ys[i])
        b = await p.b2a(np.zeros(x.shape[0], dtype=np.uint8) if i else (s & 1).astype(np.uint8))
        return np.concatenate([s, m, b])

    out = asyncio.run(run_parties(n, fn, random_bytes=seeded_random_bytes(bytes(32)), wrap=wrap))
    return recorders, reveal(out)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_received_messages_are_uniform(n: int) -> None:
    """Every message a party receives passes a fixed-seed χ² test on its byte values."""
    k = 8192
    x = FP.encode(np.zeros(k))  # the most structured input there is
    y = FP.encode(np.full(k, 1.0))
    recorders, _ = _run_recorded(n, x, y)
    msgs = recorders[1].received
    assert len(msgs) == (n - 1) * (6 + 2 + 1)  # comparison, mul_fixed, b2a
    for msg in msgs:
        counts = np.bincount(np.frombuffer(msg, dtype=np.uint8), minlength=256)
        expected = len(msg) / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < CHI2_255_P001, (len(msg), chi2)


def test_no_message_carries_an_input() -> None:
    """No 8-byte word of any message equals an input, a product, or their difference."""
    rng = np.random.default_rng(3)
    x = FP.encode(rng.uniform(-1000, 1000, 4096))
    y = FP.encode(rng.uniform(-1000, 1000, 4096))
    recorders, result = _run_recorded(2, x, y)
    secrets = np.concatenate([x, y, x - y, y - x, x * y])
    for rec in recorders:
        for msg in rec.received:
            if len(msg) % 8 == 0:
                words = np.frombuffer(msg, dtype=np.uint64)
                assert not np.isin(words, secrets).any()
            assert x[:4].tobytes() not in msg
    lt = result[:4096]
    np.testing.assert_array_equal(lt, (x.view(np.int64) < y.view(np.int64)).astype(np.uint64))


def test_comparison_traffic_and_rounds() -> None:
    """A comparison takes 6 rounds and about 19.6 bytes per element per peer."""
    k = 1 << 12
    xs = share(FP.encode(np.linspace(-5, 5, k)), 2)

    async def fn(p: Party) -> tuple[int, int]:
        await p.lt_public(xs[p.index], 0)
        return p.traffic.rounds, p.traffic.bytes_sent

    (rounds, sent), _ = asyncio.run(run_parties(2, fn))
    assert rounds == 6
    assert sent / k == pytest.approx(8 + 3 * sum(CMP_LEVELS) / 8 + 3 / 8)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_dealer_relations_hold(n: int) -> None:
    """Reconstructed correlations satisfy their relations; only party 0 gets corrections."""
    plan = Plan(
        triples=100, truncs=100, dabits=100, comparisons=100, squares=100, compare_selects=100
    )
    bundles = deal(
        plan, n, frac_bits=DEFAULT_FRAC_BITS, random_bytes=seeded_random_bytes(bytes(32))
    )
    for party_bundles in bundles[1:]:
        assert all(not b.corrections for b in party_bundles)
    per_kind: dict[Kind, list[dict[str, Any]]] = {}
    for party_bundles in bundles:
        for b in party_bundles:
            per_kind.setdefault(b.kind, []).append(materialise(b).fields)

    def add(kind: Kind, name: str) -> Any:
        return reduce(np.add, [f[name] for f in per_kind[kind]])

    def xor(kind: Kind, name: str) -> Any:
        return reduce(np.bitwise_xor, [f[name] for f in per_kind[kind]])

    np.testing.assert_array_equal(
        add(Kind.TRIPLE, "c"), add(Kind.TRIPLE, "a") * add(Kind.TRIPLE, "b")
    )
    np.testing.assert_array_equal(add(Kind.SQUARE, "aa"), add(Kind.SQUARE, "a") ** 2)
    cs_r = add(Kind.CMP_SELECT, "r_arith")
    np.testing.assert_array_equal(cs_r, bitrev64(xor(Kind.CMP_SELECT, "r_bool")))
    cs_alpha = xor(Kind.CMP_SELECT, "fa").astype(np.uint64)
    np.testing.assert_array_equal(add(Kind.CMP_SELECT, "m_a"), cs_alpha)
    for nm in ("a", "b", "c", "bc"):
        want = add(Kind.CMP_SELECT, f"m_{nm}") * cs_r
        np.testing.assert_array_equal(add(Kind.CMP_SELECT, f"p_{nm}"), want)
    r = add(Kind.TRUNC, "r")
    np.testing.assert_array_equal(add(Kind.TRUNC, "r_msb"), r >> np.uint64(63))
    np.testing.assert_array_equal(add(Kind.TRUNC, "r_t"), (r << np.uint64(1)) >> np.uint64(17))
    np.testing.assert_array_equal(add(Kind.DABIT, "b_arith"), xor(Kind.DABIT, "b_bool"))
    np.testing.assert_array_equal(add(Kind.CMP, "r_arith"), bitrev64(xor(Kind.CMP, "r_bool")))
    halves = xor(Kind.CMP, "r_bool").view(np.uint32)
    np.testing.assert_array_equal(xor(Kind.CMP, "q32"), halves[1::2] & halves[0::2])
    for h in CMP_LEVELS:
        a = xor(Kind.CMP, f"a{h}")
        np.testing.assert_array_equal(xor(Kind.CMP, f"c{h}"), a & xor(Kind.CMP, f"b{h}"))
        np.testing.assert_array_equal(xor(Kind.CMP, f"cp{h}"), a & xor(Kind.CMP, f"bp{h}"))
    al, be, ga = (xor(Kind.CMP, nm).astype(np.uint64) for nm in ("fa", "fb", "fc"))
    sa = 1 - 2 * al
    np.testing.assert_array_equal(add(Kind.CMP, "m_a"), al)
    np.testing.assert_array_equal(add(Kind.CMP, "m_b"), be * sa)
    np.testing.assert_array_equal(add(Kind.CMP, "m_c"), ga * sa)
    np.testing.assert_array_equal(add(Kind.CMP, "m_bc"), (be & ga) * sa)


def test_bundle_validation() -> None:
    """A party-1 bundle with corrections, or a short seed, is refused."""
    good = deal(Plan(triples=4), 2)[0][0]
    with pytest.raises(CorrelationError):
        Bundle(Kind.TRIPLE, 1, 4, 16, good.seed, good.corrections)
    with pytest.raises(CorrelationError):
        Bundle(Kind.TRIPLE, 0, 4, 16, b"short", good.corrections)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pack_roundtrip(bits: int) -> None:
    """Sub-byte packing is lossless for any length."""
    rng = np.random.default_rng(bits)
    for n in (1, 7, 8, 9, 1000):
        v = rng.integers(0, 1 << bits, n, dtype=np.uint8)
        np.testing.assert_array_equal(unpack(pack(v, bits), bits, n), v)


def test_bitrev_is_the_index_reversal() -> None:
    """bitrev64 moves bit i to bit rev6(i) and is an involution."""
    x = np.array([1 << i for i in range(64)], dtype=np.uint64)
    want = np.array([1 << int(f"{i:06b}"[::-1], 2) for i in range(64)], dtype=np.uint64)
    np.testing.assert_array_equal(bitrev64(x), want)
    np.testing.assert_array_equal(bitrev64(bitrev64(want)), want)


def test_mismatched_sizes_are_a_protocol_error() -> None:
    """Parties that open arrays of different lengths get ProtocolError, not garbage."""

    async def fn(p: Party) -> RingArray:
        k = 10 + p.index
        return await p.mul(np.zeros(k, np.uint64), np.zeros(k, np.uint64))

    with pytest.raises(ProtocolError, match="expected"):
        asyncio.run(run_parties(2, fn))


def test_silent_peer_is_peer_lost() -> None:
    """A peer that never answers raises PeerLostError after the round timeout."""

    async def fn(p: Party) -> RingArray:
        if p.index == 1:
            await asyncio.sleep(1.0)
            return np.zeros(1, np.uint64)
        return await p.mul(np.zeros(4, np.uint64), np.zeros(4, np.uint64))

    with pytest.raises(PeerLostError, match="within"):
        asyncio.run(run_parties(2, fn, round_timeout=0.2))


def test_closed_peer_is_peer_lost() -> None:
    """A peer that closes its transport makes the other raise PeerLostError."""

    async def fn(p: Party) -> RingArray:
        if p.index == 1:
            await p.transport.close()
            return np.zeros(1, np.uint64)
        return await p.mul(np.zeros(4, np.uint64), np.zeros(4, np.uint64))

    with pytest.raises(PeerLostError, match="closed"):
        asyncio.run(run_parties(2, fn))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_open_to_output_party_only(n: int) -> None:
    """Result shares go HPKE-encrypted to the output key; others cannot open them; N of N."""
    key = X25519PrivateKey.generate()
    x = FP.encode(np.array([1.5, -2.25, 3e4]))
    xs = share(x, n)

    async def fn(p: Party) -> bytes:
        m = p.mul_public(xs[p.index], 2)
        return p.open_to(m, key.public_key(), context=b"window-7")

    cts = asyncio.run(run_parties(n, fn))
    np.testing.assert_array_equal(reconstruct_output(cts, key, context=b"window-7"), x * 2)
    for ct in cts:
        assert (x * 2).tobytes()[:8] not in ct
    with pytest.raises(ProtocolError, match="decrypt"):
        reconstruct_output(cts, X25519PrivateKey.generate(), context=b"window-7")
    with pytest.raises(ProtocolError, match="decrypt"):
        reconstruct_output(cts, key, context=b"window-8")
    with pytest.raises(ProtocolError, match="need one share"):
        reconstruct_output(cts[:-1], key, context=b"window-7")
    with pytest.raises(ProtocolError, match="two result shares"):
        reconstruct_output([*cts[:-1], cts[0]], key, context=b"window-7")
