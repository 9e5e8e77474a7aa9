"""The engine for N = 2, 3, 4 parties: rounds do not depend on N, nor does dealer traffic.

Round counts and per-peer message sizes are read from every party's traffic
counters and compared across N (no hard-coded figures): the same operation on
the same sizes takes the same rounds with the same message per peer for any
N, and a party sends that message to each of its N − 1 peers. The same holds
for the whole analytics secure program, which also releases the same
statistics for every N. Dealer frames: parties 1..N−1 get seeds only (a
size independent of the batch), party 0's corrections do not grow with N,
and one party's bundle alone is independent of the correlated values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import reduce
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.analytics.minmax import segment_min_max
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.analytics.secure import MpcOps
from cloud_tecc.mpc import Kind, Party, Plan, reveal, run_parties, seeded_random_bytes, share
from cloud_tecc.mpc.bits import bitrev64
from cloud_tecc.mpc.bundle_wire import encode_batch
from cloud_tecc.mpc.correlations import CMP_LEVELS, correction_fields, expand_fields, materialise
from cloud_tecc.mpc.dealer import deal, deal_kind
from cloud_tecc.mpc.engine import Traffic
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray
from tests.mpc.analytics_run import secure_run_n, streams_fixture
from tests.mpc.twosample import compare

FP = FixedPoint()
NS = (2, 3, 4)
K = 64
OUT_KEY = X25519PrivateKey.generate()

Op = Callable[[Party, RingArray, RingArray, RingArray], Awaitable[object]]
PROTOCOLS: dict[str, Op] = {
    "mul": lambda p, x, y, s: p.mul(x, y),
    "square": lambda p, x, y, s: p.square(x),
    "trunc": lambda p, x, y, s: p.trunc(x),
    "mul_fixed": lambda p, x, y, s: p.mul_fixed(x, y),
    "msb": lambda p, x, y, s: p.msb(x),
    "msb_times": lambda p, x, y, s: p.msb_times(x, y),
    "lt": lambda p, x, y, s: p.lt(x, y),
    "lt_public": lambda p, x, y, s: p.lt_public(x, FP.encode_scalar(2.0)),
    "b2a": lambda p, x, y, s: p.b2a((x & np.uint64(1)).astype(np.uint8)),
    "select": lambda p, x, y, s: p.select(s, x, y),
    "min": lambda p, x, y, s: p.min(x, y),
    "max": lambda p, x, y, s: p.max(x, y),
    "tree_min": lambda p, x, y, s: p.tree_min(x.reshape(8, 8)),
    "tree_max": lambda p, x, y, s: p.tree_max(x.reshape(4, 16)),
    "segment_min_max": lambda p, x, y, s: segment_min_max(
        MpcOps(p), x, np.array([1, 2, 3, 5, 8, 13, 32])
    ),
}


async def _open_to(p: Party, x: RingArray, y: RingArray, s: RingArray) -> bytes:
    return p.open_to(x, OUT_KEY.public_key(), context=b"w")


def _traffic(n: int, op: Op) -> list[Traffic]:
    rng = np.random.default_rng(5)
    x = FP.encode(rng.uniform(-100, 100, K))
    y = FP.encode(rng.uniform(-100, 100, K))
    s = rng.integers(0, 2, K, dtype=np.uint64)
    xs, ys, ss = share(x, n), share(y, n), share(s, n)

    async def fn(p: Party) -> Traffic:
        await op(p, xs[p.index], ys[p.index], ss[p.index])
        return p.traffic

    return asyncio.run(run_parties(n, fn, random_bytes=seeded_random_bytes(bytes(32))))


@pytest.mark.parametrize("name", [*PROTOCOLS, "open_to"])
def test_rounds_and_per_peer_bytes_do_not_depend_on_n(name: str) -> None:
    """Same rounds, same message per peer in every round, N − 1 copies sent, for N = 2, 3, 4."""
    op = PROTOCOLS.get(name, _open_to)
    base = _traffic(2, op)[0]
    if name == "open_to":
        assert base.rounds == 0  # the result goes to the output party, not the peers
    else:
        assert base.rounds >= 1
        assert base.bytes_sent > 0
    for n in NS:
        for t in _traffic(n, op):
            assert t.rounds == base.rounds, (n, t.rounds, base.rounds)
            assert t.per_round == base.per_round, n
            assert t.bytes_sent == (n - 1) * sum(base.per_round)
            assert t.bytes_received == t.bytes_sent


POLICY = policy_from_mapping(
    {
        "window_s": 10,
        "min_count": 10,
        "limits": [{"sensor": "t*", "low": 0.0, "high": 80.0}],
        "rates": [{"sensor": "*", "max_delta": 5.0}],
        "zscore": {"window": 30, "k": 3.0, "min_baseline": 10, "min_sigma": 0.01},
        "flatline": [{"sensor": "t*", "span": 10, "min_std": 0.2}],
        "fleet": {"classes": {"temp": ["t*"]}, "k": 1.2},
    }
)


async def test_analytics_rounds_and_results_do_not_depend_on_n() -> None:
    """The analytics secure program: equal rounds, per-round sizes and releases for N = 2, 3, 4.

    Releases are also equal to the plaintext reference's (counts, mean, std,
    min/max, limit/rate/z-score/flatline alerts, fleet rows).
    """
    streams = streams_fixture()
    runs = {n: await secure_run_n(n, POLICY, streams) for n in NS}
    base = runs[2].traffic[0]
    assert base.rounds > 20
    for n, run in runs.items():
        for t in run.traffic:
            assert (t.rounds, t.per_round) == (base.rounds, base.per_round), n
            assert t.bytes_sent == (n - 1) * sum(base.per_round)
        for ref, got in zip(run.results, run.decoded, strict=True):
            assert got.windows == ref.released.windows
            assert got.fleet == ref.released.fleet
            assert sorted(map(str, got.alerts)) == sorted(map(str, ref.released.alerts))
    alerts = {a["detector"] for r in runs[3].decoded for a in r.alerts}
    assert {"limit", "rate", "zscore", "flatline"} <= alerts


@pytest.mark.parametrize("n", NS)
def test_wraparound_ring_arithmetic(n: int) -> None:
    """Products and sums wrap mod 2^64 exactly (full-ring operands), for every N."""
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2**64 - 1, 257, dtype=np.uint64, endpoint=True)
    y = rng.integers(0, 2**64 - 1, 257, dtype=np.uint64, endpoint=True)
    x[:4] = [2**64 - 1, 2**63, 0, 1]
    y[:4] = [2**64 - 1, 2, 2**63, 2**64 - 1]
    xs, ys = share(x, n), share(y, n)

    async def fn(p: Party) -> RingArray:
        i = p.index
        prod = await p.mul(xs[i], ys[i])
        return np.concatenate([prod, p.add(xs[i], ys[i]), p.sub(xs[i], ys[i])])

    got = reveal(asyncio.run(run_parties(n, fn)))
    np.testing.assert_array_equal(got, np.concatenate([x * y, x + y, x - y]))
    assert got[0] == 1
    assert got[1] == 0


def _frame_sizes(n: int, count: int) -> list[int]:
    plan = Plan(
        triples=count,
        truncs=count,
        dabits=count,
        comparisons=count,
        squares=count,
        compare_selects=count,
    )
    bundles = deal(plan, n, random_bytes=seeded_random_bytes(bytes(32)))
    return [len(encode_batch(i, 0, b)) for i, b in enumerate(bundles)]


def test_dealer_sends_seeds_to_parties_1_to_n_minus_1_and_one_correction() -> None:
    """Parties 1..N−1: a frame whose size depends on neither the batch nor N (a seed per kind).

    Party 0: the same frame size for N = 2, 3, 4, growing with the batch by
    exactly the derived fields' bytes per correlation.
    """
    per_element = sum(f.itemsize for k in Kind for f in correction_fields(k))
    small, large = {n: _frame_sizes(n, 1000) for n in NS}, {n: _frame_sizes(n, 5000) for n in NS}
    seeds_only = small[2][1]
    assert seeds_only <= 15 + len(Kind) * (10 + 32)  # header + (kind, frac, count, seed) per kind
    for n in NS:
        assert small[n][1:] == [seeds_only] * (n - 1)
        assert large[n][1:] == [seeds_only] * (n - 1)
        assert small[n][0] == small[2][0]
        assert large[n][0] == large[2][0]
    assert large[2][0] - small[2][0] == 4000 * per_element


def _true_values(kind: Kind, bundles: list[Any]) -> dict[str, Any]:
    """The correlated values themselves (what all N bundles reconstruct)."""
    fields = [materialise(b).fields for b in bundles]

    def add(name: str) -> Any:
        return reduce(np.add, [f[name] for f in fields])

    def xor(name: str) -> Any:
        return reduce(np.bitwise_xor, [f[name] for f in fields])

    if kind is Kind.TRIPLE:
        return {"c": add("a") * add("b")}
    if kind is Kind.SQUARE:
        return {"aa": add("a") * add("a")}
    if kind is Kind.TRUNC:
        r = add("r")
        return {"r_msb": r >> np.uint64(63), "r_t": (r << np.uint64(1)) >> np.uint64(17)}
    if kind is Kind.DABIT:
        return {"b_arith": xor("b_bool").astype(np.uint64)}
    halves = xor("r_bool").view(np.uint32)
    out = {"r_arith": bitrev64(xor("r_bool")), "q32": halves[1::2] & halves[0::2]}
    for h in CMP_LEVELS:
        out[f"c{h}"] = xor(f"a{h}") & xor(f"b{h}")
        out[f"cp{h}"] = xor(f"a{h}") & xor(f"bp{h}")
    al = xor("fa").astype(np.uint64)
    sa = np.uint64(1) - (al << np.uint64(1))
    be, ga = xor("fb").astype(np.uint64), xor("fc").astype(np.uint64)
    out |= {"m_a": al, "m_b": be * sa, "m_c": ga * sa, "m_bc": (be & ga) * sa}
    if kind is Kind.CMP_SELECT:
        out |= {f"p_{k}": out[f"m_{k}"] * out["r_arith"] for k in ("a", "b", "c", "bc")}
    return out


def _split_by_bit(data: Any, value: Any) -> tuple[Any, Any]:
    """Rows of ``data`` (bytes per element) grouped by the low bit of a value (or its top bit)."""
    v = np.asarray(value).astype(np.uint64)
    bit = v & np.uint64(1) if v.max() <= 1 or not (v >> np.uint64(63)).any() else v >> np.uint64(63)
    rows = np.ascontiguousarray(data).view(np.uint8).reshape(len(data), -1)
    a, b = rows[bit == 0], rows[bit == 1]
    m = min(len(a), len(b))
    return a[:m], b[:m]


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("kind", list(Kind))
def test_one_partys_bundle_is_independent_of_the_correlated_values(n: int, kind: Kind) -> None:
    """Party 0's corrections (and party 1's derived stream) are independent of the values.

    Grouping the correlations by a bit of their true value (msb(r), α, c = ab,
    an AND output, …), the correction bytes are equally distributed in both
    groups; the true values themselves (all N bundles together) are not.
    """
    count = 6000
    bundles = deal_kind(kind, count, n, 16, seeded_random_bytes(bytes([n]) * 32))
    truth = _true_values(kind, bundles)
    party1 = expand_fields(kind, bundles[1].seed, count, derived=True)
    for f in correction_fields(kind):
        a, b = _split_by_bit(bundles[0].corrections[f.name], truth[f.name])
        assert len(a) > count // 16, f.name  # both groups are populated
        assert not compare(a, b).distinguishable, (f.name, "party 0")
        a1, b1 = _split_by_bit(party1[f.name], truth[f.name])
        assert not compare(a1, b1).distinguishable, (f.name, "party 1")
        ta, tb = _split_by_bit(truth[f.name], truth[f.name])
        assert compare(ta, tb).distinguishable, (f.name, "the values themselves")
