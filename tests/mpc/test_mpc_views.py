"""N − 1 parties cannot tell two input sets apart from everything they receive.

The recorded *view* of a coalition is everything its members receive or hold
during a run: their input shares, the dealer frames addressed to them (seeds,
and party 0's corrections, as on the wire), every message from every other
party (the honest one included), every value opened in every round, and their
result shares; plus functions of it a curious coalition would compute (the
sums of its input and result shares). The views are recorded by a transport
wrapper, a dealer wrapper and a :class:`Party` subclass that keeps what
``_open`` returned: nothing in the product code.

The protocol suite (every protocol of the engine) runs ``RUNS`` times on input
set A and ``RUNS`` times on input set B, each run with its own fixed seed for
the dealer and for the input shares; every byte coordinate of the views is
compared with a two-sample χ² test (high and low nibble), Bonferroni-corrected
(:mod:`tests.mpc.twosample`). Fixed seeds: the outcome is deterministic.
The same test detects a coalition of *all* N parties and a single deliberately
unmasked opening, so it can fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from cloud_tecc.mpc import Party, reveal, seeded_random_bytes, share
from cloud_tecc.mpc.protocol import Ctx, Open, Proto, arith
from cloud_tecc.mpc.transport import MemoryNetwork
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray
from tests.mpc.twosample import compare
from tests.mpc.views import PartyView, Recorder, RecordingDealer, ViewParty, coalition_view

FP = FixedPoint()
K = 8  # elements per operation
RUNS = 100  # runs per input set
LEAK_RUNS = 40
#: Input set A: all zeros (the most structured); B: extremes and ordinary values.
SET_A = (np.zeros(K), np.zeros(K))
SET_B = (
    np.array([2**15 - 1, -(2**15), FP.lsb, -FP.lsb, 123.456, -7.0, 1000.0, 0.5]),
    np.array([-(2**15), 2**15 - 1, -FP.lsb, 3.0, 123.456, 7.0, -1000.0, 0.25]),
)


def _unmasked_open(_ctx: Ctx, x: RingArray) -> Proto[RingArray]:
    """A broken protocol step: opens ``x`` itself (no mask). Negative control only."""
    (c,) = yield Open((arith(x),))
    return c


async def _suite(p: Party, x: RingArray, y: RingArray, b: RingArray, leak: bool) -> list[RingArray]:
    """Every protocol of the engine once."""
    out = [
        await p.lt(x, y),
        await p.msb(x),
        await p.lt_public(x, FP.encode_scalar(1.0)),
        await p.min(x, y),
        await p.max(x, y),
        await p.mul(x, y),
        await p.mul_fixed(x, y),
        await p.trunc(x),
        (await p.tree_min(x.reshape(2, K // 2))).reshape(-1),
        await p.b2a(b.astype(np.uint8)),
    ]
    out.append(await p.select(out[0], x, y))
    out.append(await p.square(x))
    out += await p.msb_times(x, y)
    if leak:
        out.append(await p.run(_unmasked_open(p.ctx, x)))
    return out


def _seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


async def _square_only(
    p: Party, x: RingArray, y: RingArray, b: RingArray, leak: bool
) -> list[RingArray]:
    """The square-pair protocol alone (its one opening, ``x − a``), on both inputs."""
    return [await p.square(x), await p.square(y)]


async def _run_once(
    n: int, values: tuple[Any, Any], seed: bytes, leak: bool, suite: Any = _suite
) -> list[PartyView]:
    x, y = FP.encode(values[0]), FP.encode(values[1])
    secret_bits = (x.view(np.int64) > 0).astype(np.uint64)
    draw = seeded_random_bytes(_seed("inputs", seed))
    xs, ys = share(x, n, random_bytes=draw), share(y, n, random_bytes=draw)
    masks = [
        np.frombuffer(draw(K), dtype=np.uint8).astype(np.uint64) & np.uint64(1)
        for _ in range(n - 1)
    ]
    bits = [secret_bits ^ np.bitwise_xor.reduce(masks), *masks]
    net = MemoryNetwork(n)
    dealer = RecordingDealer(n, _seed("dealer", seed))
    recs = [Recorder(net.transport(i)) for i in range(n)]
    parties = [ViewParty(i, n, recs[i], dealer.source(i)) for i in range(n)]
    outs = await asyncio.gather(
        *(suite(p, xs[p.index], ys[p.index], bits[p.index], leak) for p in parties)
    )
    results = [reveal([o[j] for o in outs]) for j in range(len(outs[0]))]
    # the runs compute the right thing
    if suite is _suite:
        assert results[5].tolist() == (x * y).tolist()
        assert results[11].tolist() == (x * x).tolist()
    else:
        assert [r.tolist() for r in results] == [(x * x).tolist(), (y * y).tolist()]
    return [
        PartyView(
            [xs[i], ys[i]], bits[i], dealer.frames[i], recs[i].received, parties[i].opened, outs[i]
        )
        for i in range(n)
    ]


async def _views(
    n: int, values: tuple[Any, Any], label: str, runs: int, leak: bool, suite: Any = _suite
) -> list[Any]:
    names = () if suite is _suite else (suite.__name__,)
    return [
        await _run_once(n, values, _seed(label, n, r, leak, *names), leak, suite)
        for r in range(runs)
    ]


def _sample(runs: list[list[PartyView]], coalition: Sequence[int]) -> np.ndarray[Any, Any]:
    return np.stack([coalition_view(v, coalition) for v in runs])


async def _only_all_parties_tell_apart(n: int, suite: Any, *, min_tests: int) -> None:
    """Runs of ``suite`` over set A and set B: no coalition of N − 1 parties separates them
    (over more than ``min_tests`` view coordinates); all N parties together do."""
    runs_a = await _views(n, SET_A, "A", RUNS, leak=False, suite=suite)
    runs_b = await _views(n, SET_B, "B", RUNS, leak=False, suite=suite)
    for coalition in itertools.combinations(range(n), n - 1):
        res = compare(_sample(runs_a, coalition), _sample(runs_b, coalition))
        assert res.tests > min_tests
        assert not res.distinguishable, (coalition, res.rejected[:5])
    everyone = compare(_sample(runs_a, range(n)), _sample(runs_b, range(n)))
    assert everyone.distinguishable


@pytest.mark.parametrize("n", [2, 3])
async def test_any_n_minus_1_parties_cannot_tell_input_sets_apart(n: int) -> None:
    """For every coalition of N − 1 parties, no view coordinate separates set A from set B.

    The same recorded runs, viewed by all N parties together (who hold every
    share), are told apart: the test has the power to fail.
    """
    await _only_all_parties_tell_apart(n, _suite, min_tests=1000)


@pytest.mark.parametrize("n", [2, 3])
async def test_one_unmasked_opening_is_detected(n: int) -> None:
    """A suite with one opening that forgot its mask is told apart by a single party."""
    runs_a = await _views(n, SET_A, "A", LEAK_RUNS, leak=True)
    runs_b = await _views(n, SET_B, "B", LEAK_RUNS, leak=True)
    for coalition in itertools.combinations(range(n), n - 1):
        res = compare(_sample(runs_a, coalition), _sample(runs_b, coalition))
        assert res.distinguishable, coalition


@pytest.mark.parametrize("n", [2, 3, 4])
async def test_square_opening_cannot_tell_input_sets_apart(n: int) -> None:
    """The square pair's one opening ``x − a`` (and its messages, dealer frames, result
    shares) seen by any N − 1 parties does not separate set A from set B, for N = 2, 3, 4;
    all N parties together do."""
    await _only_all_parties_tell_apart(n, _square_only, min_tests=100)
