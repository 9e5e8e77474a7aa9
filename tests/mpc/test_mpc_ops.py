"""Every MPC operation against a plaintext reference on the same fixed-point inputs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.mesh.programs import bench_zscore
from cloud_tecc.analytics.minmax import segment_min_max
from cloud_tecc.analytics.secure import MpcOps
from cloud_tecc.mpc import Party, reveal, run_parties, seeded_random_bytes, share
from tecc_contract.fixedpoint import MAX_ABS_RANGE, FixedPoint
from tecc_contract.ring import RingArray

FP = FixedPoint()
LSB = FP.lsb
SPECIAL = [0.0, LSB, -LSB, MAX_ABS_RANGE, -MAX_ABS_RANGE, -1.0, 1.0, -123.456]
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def values(limit: float = MAX_ABS_RANGE) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    """Random reals across ±limit plus the special points (0, ±1 LSB, the limits)."""
    specials = [v for v in SPECIAL if abs(v) <= limit] + [limit, -limit]
    elems = st.floats(-limit, limit, allow_nan=False, allow_infinity=False)
    return st.lists(st.one_of(elems, st.sampled_from(specials)), min_size=1, max_size=40).map(
        lambda xs: np.array(xs, dtype=np.float64)
    )


def ring_ints(min_size: int) -> st.SearchStrategy[list[int]]:
    """Lists of up to 40 signed 64-bit integers, the ring's edge points (0, ±1, the
    extremes, ±2^62) among them."""
    return st.lists(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**62, -(2**62)]),
        ),
        min_size=min_size,
        max_size=40,
    )


def run(n: int, fn: Callable[[Party], Awaitable[RingArray]]) -> RingArray:
    """Run ``fn`` on n parties with a fixed dealer seed; reveal the result."""
    out = asyncio.run(run_parties(n, fn, random_bytes=seeded_random_bytes(bytes(32))))
    return reveal(out)


def shared(x: np.ndarray[Any, Any], n: int, seed: int = 1) -> list[RingArray]:
    """Fixed-point encode and share ``x``."""
    return share(FP.encode(x), n, random_bytes=seeded_random_bytes(bytes([seed]) * 32))


def pair(draw_x: np.ndarray[Any, Any], draw_y: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    """Cut two drawn vectors to a common length."""
    k = min(draw_x.shape[0], draw_y.shape[0])
    return draw_x[:k], draw_y[:k]


NS = pytest.mark.parametrize("n", [2, 3, 4])


@NS
@SETTINGS
@given(xv=values(), yv=values())
def test_lt_and_msb_are_exact(n: int, xv: Any, yv: Any) -> None:
    """[x < y] and [x < 0] match numpy on the encoded values, for any N."""
    xv, yv = pair(xv, yv)
    xs, ys = shared(xv, n), shared(yv, n, 2)

    async def fn(p: Party) -> RingArray:
        a = await p.lt(xs[p.index], ys[p.index])
        b = await p.msb(xs[p.index])
        return np.concatenate([a, b])

    got = run(n, fn)
    xe, ye = FP.encode(xv).view(np.int64), FP.encode(yv).view(np.int64)
    want = np.concatenate([xe < ye, xe < 0]).astype(np.uint64)
    np.testing.assert_array_equal(got, want)


@NS
@SETTINGS
@given(
    xv=values(),
    raw=ring_ints(min_size=0),
)
def test_msb_times_is_exact(n: int, xv: Any, raw: list[int]) -> None:
    """[x < 0] and [x < 0]·x exact over the whole ring, with other comparisons in the same
    rounds (``plain``); the products add no round and no byte to the comparison's."""
    x = np.concatenate([FP.encode(xv), np.array(raw, dtype=np.int64).view(np.uint64)])
    plain = FP.encode(xv[::-1])
    ps = share(plain, n)
    xs = share(x, n, random_bytes=seeded_random_bytes(bytes([3]) * 32))

    async def fn(p: Party) -> RingArray:
        bp, bx, prod = await p.msb_times(xs[p.index], ps[p.index])
        with_products = list(p.traffic.per_round)
        again = await p.msb(np.concatenate([ps[p.index], xs[p.index]]))
        assert with_products == p.traffic.per_round[len(with_products) :]
        return np.concatenate([bp, bx, prod, again])

    got = run(n, fn)
    xi, pi = x.view(np.int64), plain.view(np.int64)
    m, k = len(plain), len(x)
    np.testing.assert_array_equal(got[:m], (pi < 0).astype(np.uint64))
    np.testing.assert_array_equal(got[m : m + k], (xi < 0).astype(np.uint64))
    np.testing.assert_array_equal(got[m + k : m + 2 * k], np.where(xi < 0, x, np.uint64(0)))
    np.testing.assert_array_equal(got[m + 2 * k :], got[: m + k])


@NS
@SETTINGS
@given(raw=ring_ints(min_size=1))
def test_msb_whole_ring(n: int, raw: list[int]) -> None:
    """The sign bit is exact for every 64-bit value, including ±2^63 edges."""
    x = np.array(raw, dtype=np.int64)
    xs = share(x.view(np.uint64), n)

    async def fn(p: Party) -> RingArray:
        return await p.msb(xs[p.index])

    np.testing.assert_array_equal(run(n, fn), (x < 0).astype(np.uint64))


@NS
@SETTINGS
@given(xv=values(), c=st.one_of(st.floats(-1e6, 1e6), st.sampled_from(SPECIAL)))
def test_lt_public(n: int, xv: Any, c: float) -> None:
    """[x < c] for a public threshold c."""
    xs = shared(xv, n)
    ce = FP.encode_scalar(c)

    async def fn(p: Party) -> RingArray:
        return await p.lt_public(xs[p.index], ce)

    want = (FP.encode(xv).view(np.int64) < np.uint64(ce).view(np.int64)).astype(np.uint64)
    np.testing.assert_array_equal(run(n, fn), want)


@NS
@SETTINGS
@given(xv=values(), yv=values())
def test_min_max_select(n: int, xv: Any, yv: Any) -> None:
    """min, max and select(lt) are exact."""
    xv, yv = pair(xv, yv)
    xs, ys = shared(xv, n), shared(yv, n, 2)

    async def fn(p: Party) -> RingArray:
        i = p.index
        lo = await p.min(xs[i], ys[i])
        hi = await p.max(xs[i], ys[i])
        s = await p.lt(ys[i], xs[i])
        sel = await p.select(s, ys[i], xs[i])
        return np.concatenate([lo, hi, sel])

    xe, ye = FP.encode(xv).view(np.int64), FP.encode(yv).view(np.int64)
    want = np.concatenate([np.minimum(xe, ye), np.maximum(xe, ye), np.minimum(xe, ye)])
    np.testing.assert_array_equal(run(n, fn).view(np.int64), want)


@NS
@SETTINGS
@given(xv=values(), k=st.integers(1, 9))
def test_tree_min_max(n: int, xv: Any, k: int) -> None:
    """Tree min/max over the last axis (odd widths included) are exact."""
    m = max(1, xv.shape[0] // k)
    grid = np.resize(xv, m * k).reshape(m, k)
    gs = share(FP.encode(grid), n)

    async def fn(p: Party) -> RingArray:
        lo = await p.tree_min(gs[p.index])
        hi = await p.tree_max(gs[p.index])
        return np.concatenate([lo, hi])

    ge = FP.encode(grid).view(np.int64)
    want = np.concatenate([ge.min(axis=1), ge.max(axis=1)])
    np.testing.assert_array_equal(run(n, fn).view(np.int64), want)


def _check_segment_min_max(n: int, v: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]) -> None:
    """Segmented min/max of ``v`` on n parties equals the plaintext one, per segment."""
    vs = share(FP.encode(v), n)

    async def fn(p: Party) -> RingArray:
        lo, hi = await segment_min_max(MpcOps(p), vs[p.index], counts)
        return np.concatenate([lo, hi])

    enc = FP.encode(v).view(np.int64)
    parts = np.split(enc, np.cumsum(counts)[:-1])
    want = np.array([s.min() for s in parts] + [s.max() for s in parts])
    np.testing.assert_array_equal(run(n, fn).view(np.int64), want)


@NS
@SETTINGS
@given(xv=values(), cuts=st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_segment_min_max(n: int, xv: Any, cuts: list[int]) -> None:
    """Min/max over ragged segments with public lengths are exact (the analytics' one)."""
    counts = np.array(cuts)
    v = np.resize(xv, int(counts.sum()))
    _check_segment_min_max(n, v, counts)


@NS
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=6),
    levels=st.integers(2, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_segment_min_max_four_way_levels(
    n: int, lengths: list[int], levels: int, seed: int
) -> None:
    """Long windows reach the four-way levels (after the first level and the binary ones,
    more than 16 readings): exact, ties among few distinct values and the extremes included."""
    counts = np.array(lengths)
    rng = np.random.default_rng(seed)
    choices = np.array([*rng.uniform(-1e6, 1e6, levels), MAX_ABS_RANGE, -MAX_ABS_RANGE])
    v = rng.choice(choices, int(counts.sum()))
    _check_segment_min_max(n, v, counts)


@NS
@SETTINGS
@given(xv=values(2.0**15), yv=values(2.0**15))
def test_mul_and_mul_fixed(n: int, xv: Any, yv: Any) -> None:
    """Ring product exact; fixed-point product within one LSB of ⌊xy/2^f⌋."""
    xv, yv = pair(xv, yv)
    xs, ys = shared(xv, n), shared(yv, n, 2)

    async def fn(p: Party) -> RingArray:
        i = p.index
        ring = await p.mul(xs[i], ys[i])
        fixed = await p.mul_fixed(xs[i], ys[i])
        return np.concatenate([ring, fixed])

    got = run(n, fn)
    xe, ye = FP.encode(xv), FP.encode(yv)
    k = xe.shape[0]
    np.testing.assert_array_equal(got[:k], xe * ye)
    floor = (xe * ye).view(np.int64) >> 16
    err = got[k:].view(np.int64) - floor
    assert set(np.unique(err).tolist()) <= {0, 1}


@NS
@SETTINGS
@given(
    xv=values(2.0**15),
    raw=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40),
)
def test_square_is_exact(n: int, xv: Any, raw: list[int]) -> None:
    """The square-pair protocol gives x² exactly (mod 2^64) for readings and full-ring values,
    equal to the Beaver product x·x, with one 8-byte opening per element per peer (half)."""
    ring = np.array([*raw, 0, 1, 2**63, 2**64 - 1, 2**32], dtype=np.uint64)
    x = np.concatenate([FP.encode(xv), ring])
    xs = share(x, n, random_bytes=seeded_random_bytes(bytes([7]) * 32))

    async def fn(p: Party) -> RingArray:
        sq = await p.square(xs[p.index])
        sq_traffic = p.traffic.per_round[-1]
        prod = await p.mul(xs[p.index], xs[p.index])
        assert 2 * sq_traffic == p.traffic.per_round[-1] == 16 * len(x)
        return np.concatenate([sq, prod])

    got = run(n, fn)
    k = x.shape[0]
    np.testing.assert_array_equal(got[:k], x * x)
    np.testing.assert_array_equal(got[k:], x * x)


@NS
@SETTINGS
@given(
    raw=st.lists(
        st.one_of(
            st.integers(-(2**62), 2**62 - 1),
            st.sampled_from([0, 1, -1, 2**62 - 1, -(2**62), 65535, -65536, 65536]),
        ),
        min_size=1,
        max_size=40,
    ),
    f=st.sampled_from([0, 1, 16, 40]),
)
def test_trunc_bound(n: int, raw: list[int], f: int) -> None:
    """Truncation returns ⌊x/2^f⌋ or ⌊x/2^f⌋ + 1 over the whole range |x| ≤ 2^62."""
    x = np.array(raw, dtype=np.int64)
    xs = share(x.view(np.uint64), n)

    async def fn(p: Party) -> RingArray:
        return await p.trunc(xs[p.index])

    got = asyncio.run(run_parties(n, fn, frac_bits=f, random_bytes=seeded_random_bytes(bytes(32))))
    err = reveal(got).view(np.int64) - (x >> f)
    assert set(np.unique(err).tolist()) <= {0, 1}


@NS
def test_trunc_error_is_sometimes_one(n: int) -> None:
    """The +1 case occurs (the bound is tight, not vacuous)."""
    x = np.arange(1, 5001, dtype=np.int64) * 12345
    xs = share(x.view(np.uint64), n)

    async def fn(p: Party) -> RingArray:
        return await p.trunc(xs[p.index])

    err = run(n, fn).view(np.int64) - (x >> 16)
    assert set(np.unique(err).tolist()) == {0, 1}


@NS
@SETTINGS
@given(bits=st.lists(st.integers(0, 1), min_size=1, max_size=64))
def test_b2a(n: int, bits: list[int]) -> None:
    """XOR-shared bits convert to arithmetic 0/1 shares."""
    b = np.array(bits, dtype=np.uint8)
    rng = np.random.default_rng(7)
    masks = [rng.integers(0, 2, b.shape[0], dtype=np.uint8) for _ in range(n - 1)]
    last: np.ndarray[Any, np.dtype[np.uint8]] = b.copy()
    for m in masks:
        last ^= m
    xs: list[Any] = [*masks, last]

    async def fn(p: Party) -> RingArray:
        return await p.b2a(xs[p.index])

    np.testing.assert_array_equal(run(n, fn), b.astype(np.uint64))


@NS
@SETTINGS
@given(xv=values(), yv=values(), c=st.integers(-1000, 1000))
def test_local_ops(n: int, xv: Any, yv: Any, c: int) -> None:
    """add, sub, add_public, mul_public and sum are exact ring operations."""
    xv, yv = pair(xv, yv)
    xs, ys = shared(xv, n), shared(yv, n, 2)
    ce = np.array([c], dtype=np.int64).view(np.uint64)

    async def fn(p: Party) -> RingArray:
        i = p.index
        return np.concatenate(
            [
                p.add(xs[i], ys[i]),
                p.sub(xs[i], ys[i]),
                p.add_public(xs[i], FP.encode_scalar(1.5)),
                p.mul_public(xs[i], ce),
                p.sum(xs[i]).reshape(1),
            ]
        )

    xe, ye = FP.encode(xv), FP.encode(yv)
    want = np.concatenate(
        [
            xe + ye,
            xe - ye,
            xe + np.uint64(FP.encode_scalar(1.5)),
            xe * ce,
            [xe.sum(dtype=np.uint64)],
        ]
    )
    np.testing.assert_array_equal(run(n, fn), want)


@NS
def test_shapes_are_kept(n: int) -> None:
    """2-D inputs give 2-D results."""
    x = FP.encode(np.arange(12, dtype=np.float64).reshape(3, 4) - 6)
    xs = share(x, n)

    async def fn(p: Party) -> RingArray:
        s = await p.lt_public(xs[p.index], 0)
        return await p.mul(s, xs[p.index])

    got = run(n, fn)
    assert got.shape == (3, 4)
    np.testing.assert_array_equal(got, np.where(x.view(np.int64) < 0, x, 0).astype(np.uint64))


@NS
def test_zscore_program(n: int) -> None:
    """The z-score flag program matches (x − μ)² > k²σ² on the same fixed-point data."""
    rng = np.random.default_rng(4)
    k = 2000
    xv = rng.normal(10.0, 3.0, k)
    x, mu, var = FP.encode(xv), FP.encode(np.full(k, 10.0)), FP.encode(np.full(k, 4.0))
    k2 = np.array([FP.encode_scalar(4.0)], dtype=np.uint64)
    xs, ms, vs = share(x, n), share(mu, n), share(var, n)

    async def fn(p: Party) -> RingArray:
        i = p.index
        inputs = {"x": xs[i], "mu": ms[i], "var": vs[i], "k2": k2, "reps": np.array([1])}
        out, _ = await bench_zscore(p, inputs)
        return out["flags"]

    d = x.view(np.int64) - mu.view(np.int64)
    lhs = (d * d) >> 16
    rhs = (var.view(np.int64) * int(k2.view(np.int64)[0])) >> 16
    got = run(n, fn)
    clear = np.abs(lhs - rhs) > 1  # away from one-LSB ties the flag is exact
    np.testing.assert_array_equal(got[clear], (lhs > rhs)[clear].astype(np.uint64))
    assert 0.05 < got.mean() < 0.6
