"""The analytics program of one epoch, written once against :class:`Ops`.

Per stream (gateway, sensor) and epoch it computes the sums Σx and Σx² (the
output service turns released sums into mean and standard deviation), exact
min/max (:mod:`cloud_tecc.analytics.minmax`), and per-reading flags:

* limits: ``(x − low)(x − high) > 0`` — exact, no truncation;
* rate of change: ``(x_t − x_{t−1})² > d²`` — exact;
* rolling z-score against the previous ``n ≤ W`` readings, on values centred
  on the stream's first reading (``y = x − c``):
  ``μ = ⌊Σy · round(2^2f/n) / 2^2f⌋``, ``m₂ = ⌊Σ⌊y²/2^f⌋ · round(2^f/n) / 2^f⌋``,
  ``σ² = m₂ − ⌊μ²/2^f⌋``, flag iff ``⌊(y − μ)²/2^f⌋·2^8 > (σ² + s²)·round(k²·2^8)``;
* fleet deviation: the same test with a stream's window mean against the mean
  and variance of all readings of its sensor class in the epoch.

Every truncation is one LSB high at most in MPC and exact (floor) in the
plaintext reference; see docs/CLOUD.md for the resulting error bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_tecc.analytics.minmax import segment_minmax
from cloud_tecc.analytics.ops import Ops
from cloud_tecc.analytics.plan import (
    EpochInput,
    EpochPlan,
    IntArray,
    StreamState,
    k2_constants,
    make_plan,
    reciprocal,
    segment_pairs,
)
from cloud_tecc.analytics.policy import AnalyticsPolicy
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray

_U64 = np.uint64
K2_DEN = 256


@dataclass(frozen=True, slots=True, eq=False)
class EpochOutput:
    """Shares (plaintext in the reference) of everything an epoch computed.

    ``margins`` are the inputs to the comparisons (positive means "no flag");
    they exist for the plaintext reference's error analysis and are never
    released or stored.
    """

    plan: EpochPlan
    s1: RingArray
    s2: RingArray
    mn: RingArray
    mx: RingArray
    limit: RingArray
    rate: RingArray
    zscore: RingArray
    fleet_s1: RingArray
    fleet_s2: RingArray
    fleet_n: IntArray
    fleet_dev: RingArray
    states: tuple[StreamState, ...]
    margins: dict[str, RingArray]


def _cat(parts: list[RingArray]) -> RingArray:
    return np.concatenate(parts).astype(_U64, copy=False) if parts else np.zeros(0, _U64)


def _split(arr: RingArray, sizes: list[int]) -> list[RingArray]:
    return np.split(arr, np.cumsum(sizes)[:-1]) if sizes else []


def _segment_sum(values: RingArray, lengths: IntArray) -> RingArray:
    out = np.zeros(len(lengths), dtype=_U64)
    nz = lengths > 0
    if values.size:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out[nz] = np.add.reduceat(values, starts[nz])
    return out


def _scatter(n: int, idx: IntArray, values: RingArray) -> RingArray:
    out = np.zeros(n, dtype=_U64)
    out[idx] = values
    return out


def _prefix(a: RingArray) -> RingArray:
    c = np.zeros(len(a) + 1, dtype=_U64)
    np.cumsum(a, out=c[1:])
    return c


class _Run:
    """One evaluation of the program; holds the intermediate arrays."""

    def __init__(self, ops: Ops, policy: AnalyticsPolicy, epoch: EpochInput) -> None:
        self.ops, self.policy, self.epoch = ops, policy, epoch
        self.codec = FixedPoint(ops.frac_bits)
        self.plan = make_plan(policy, epoch, self.codec)
        p = self.plan
        self.x = _cat([s.x for s in epoch.streams])
        centres = [s.state.centre if s.state else s.x[:1] for s in epoch.streams]
        self.c = _cat(centres)
        self.y = self.x - self.c[p.stream_of]
        hist_x = [s.state.hist_x if s.state else np.zeros(0, _U64) for s in epoch.streams]
        self.a_x = _cat(
            [v for pair in zip(hist_x, [s.x for s in epoch.streams], strict=True) for v in pair]
        )
        self.g = p.a_off[p.stream_of] + p.pos
        fleet_read = p.cls[p.stream_of] >= 0
        self.fleet_idx = np.flatnonzero(fleet_read)
        class_first_x = self.x[np.concatenate([[0], np.cumsum(p.n)[:-1]])[p.class_first]]
        self.cc = class_first_x if len(p.classes) else np.zeros(0, _U64)
        self.yf = self.x[self.fleet_idx] - self.cc[p.cls[p.stream_of][self.fleet_idx]]

    async def squares(self) -> tuple[RingArray, RingArray, RingArray, RingArray, RingArray]:
        """One multiply + one truncation round: y², (x−c_class)², missing x², limits, diffs."""
        p, ops = self.plan, self.ops
        need_q = [i for i, s in enumerate(self.epoch.streams) if s.q is None]
        q_idx = np.flatnonzero(np.isin(p.stream_of, need_q))
        lim_idx, rate_idx = np.flatnonzero(p.limit_mask), np.flatnonzero(p.rate_mask)
        diff = self.x[rate_idx] - self.a_x[self.g[rate_idx] - 1]
        lo = self.x[lim_idx] - ops.public(p.lo[lim_idx])
        hi = self.x[lim_idx] - ops.public(p.hi[lim_idx])
        xq = self.x[q_idx]
        left = _cat([self.y, self.yf, xq, lo, diff])
        right = _cat([self.y, self.yf, xq, hi, diff])
        prod = await ops.mul(left, right)
        n, nf, nq = len(self.y), len(self.yf), len(xq)
        small = await ops.trunc(prod[: n + nf + nq])
        yy, yyf, qq = _split(small, [n, nf, nq])
        lim, diff2 = _split(prod[n + nf + nq :], [len(lo), len(diff)])
        q = _cat([s.q if s.q is not None else np.zeros(len(s.x), _U64) for s in self.epoch.streams])
        q[q_idx] = qq
        self.q = q
        return yy, yyf, lim, diff2, q


async def _moments(
    run: _Run, yy: RingArray, yyf: RingArray
) -> tuple[RingArray, RingArray, RingArray, RingArray, RingArray, list[RingArray], IntArray]:
    """Baseline and fleet means / second moments (three truncation rounds)."""
    p, ops, f = run.plan, run.ops, run.ops.frac_bits
    epoch = run.epoch
    hist_y = [
        (s.state.hist_x - s.state.centre) if s.state else np.zeros(0, _U64) for s in epoch.streams
    ]
    hist_yy = [s.state.hist_yy if s.state else np.zeros(0, _U64) for s in epoch.streams]
    ys = _split(run.y, list(p.n))
    yys = _split(yy, list(p.n))
    a_y = _cat([v for pair in zip(hist_y, ys, strict=True) for v in pair])
    a_yy = _cat([v for pair in zip(hist_yy, yys, strict=True) for v in pair])
    cy, cyy = _prefix(a_y), _prefix(a_yy)
    z_idx = np.flatnonzero(p.zmask)
    g, base = run.g[z_idx], p.base_n[z_idx]
    s1p, s2p = cy[g] - cy[g - base], cyy[g] - cyy[g - base]
    # Fleet: per-class centred sums and per-stream centred sums of fleet streams.
    fleet_streams = np.flatnonzero(p.cls >= 0)
    fleet_lengths = p.n[fleet_streams]
    s1_fs = _segment_sum(run.yf, fleet_lengths)
    k = len(p.classes)
    n_f = np.array([int(p.n[p.cls == i].sum()) for i in range(k)], dtype=np.int64)
    s1_f = np.array([s1_fs[p.cls[fleet_streams] == i].sum(dtype=_U64) for i in range(k)], _U64)
    yyf_s = _segment_sum(yyf, fleet_lengths)
    s2_f = np.array([yyf_s[p.cls[fleet_streams] == i].sum(dtype=_U64) for i in range(k)], _U64)
    two = [
        s1p * reciprocal(base, 2 * f),
        s1_fs * reciprocal(fleet_lengths, 2 * f),
        s1_f * reciprocal(n_f, 2 * f),
    ]
    one = [s2p * reciprocal(base, f), s2_f * reciprocal(n_f, f)]
    sizes2, sizes1 = [len(a) for a in two], [len(a) for a in one]
    t = await ops.trunc(_cat(two + one))
    t2 = await ops.trunc(t[: sum(sizes2)])
    mu, mean_s, mu_f = _split(t2, sizes2)
    m2, m2_f = _split(t[sum(sizes2) :], sizes1)
    return mu, m2, mean_s, mu_f, m2_f, [a_y, a_yy], n_f


async def run_epoch(ops: Ops, policy: AnalyticsPolicy, epoch: EpochInput) -> EpochOutput:
    """Evaluate the analytics of one epoch; identical call sequence at every party."""
    run = _Run(ops, policy, epoch)
    p = run.plan
    yy, yyf, lim, diff2, q = await run.squares()
    mu, m2, mean_s, mu_f, m2_f, (_, a_yy), n_f = await _moments(run, yy, yyf)
    fleet_streams = np.flatnonzero(p.cls >= 0)
    z_idx, lim_idx, rate_idx = (np.flatnonzero(m) for m in (p.zmask, p.limit_mask, p.rate_mask))
    d = run.y[z_idx] - mu
    d_f = mean_s - mu_f[p.cls[fleet_streams]]
    sq_in = _cat([mu, mu_f, d, d_f])
    sq = await ops.trunc(await ops.mul(sq_in, sq_in))
    mu2, mu2_f, d2, d2_f = _split(sq, [len(mu), len(mu_f), len(d), len(d_f)])
    var, var_f = m2 - mu2, m2_f - mu2_f
    k2, vmin = k2_constants(policy.zscore.k, policy.zscore.min_sigma, run.codec)
    k2f, vminf = k2_constants(policy.fleet.k, policy.fleet.min_sigma, run.codec)
    full = np.full
    z_margin = (var + ops.public(full(len(var), vmin, _U64))) * _U64(k2) - d2 * _U64(K2_DEN)
    vf = var_f[p.cls[fleet_streams]]
    f_margin = (vf + ops.public(full(len(vf), vminf, _U64))) * _U64(k2f) - d2_f * _U64(K2_DEN)
    lim_margin = _U64(0) - lim
    rate_margin = ops.public(p.dd[rate_idx]) - diff2
    xm = _cat([epoch.streams[i].x for i in p.minmax])
    left, right, dest, c_src, c_dst = segment_pairs(p.n[p.minmax])
    mm_diff = xm[left] - xm[right]
    margins = [z_margin, f_margin, lim_margin, rate_margin, mm_diff]
    bits = await ops.ltz(_cat(margins))
    z_flag, f_flag, lim_flag, rate_flag, c = _split(bits, [len(m) for m in margins])
    mn, mx = await segment_minmax(ops, xm, p.n[p.minmax], c, (left, right, dest, c_src, c_dst))
    fleet_dev = np.zeros(len(p.n), dtype=_U64)
    fleet_dev[fleet_streams] = f_flag
    s1 = _segment_sum(run.x, p.n)
    s2 = _segment_sum(q, p.n)
    fleet_s1 = np.array([s1[p.cls == i].sum(dtype=_U64) for i in range(len(p.classes))], _U64)
    fleet_s2 = np.array([s2[p.cls == i].sum(dtype=_U64) for i in range(len(p.classes))], _U64)
    n_all = p.readings
    return EpochOutput(
        plan=p,
        s1=s1,
        s2=s2,
        mn=mn,
        mx=mx,
        limit=_scatter(n_all, lim_idx, lim_flag),
        rate=_scatter(n_all, rate_idx, rate_flag),
        zscore=_scatter(n_all, z_idx, z_flag),
        fleet_s1=fleet_s1,
        fleet_s2=fleet_s2,
        fleet_n=n_f,
        fleet_dev=fleet_dev,
        states=_new_states(run, a_yy, policy.zscore.window),
        margins={
            "zscore": _scatter(n_all, z_idx, z_margin),
            "fleet": f_margin,
            "limit": _scatter(n_all, lim_idx, lim_margin),
            "rate": _scatter(n_all, rate_idx, rate_margin),
        },
    )


def _new_states(run: _Run, a_yy: RingArray, window: int) -> tuple[StreamState, ...]:
    p = run.plan
    out = []
    for i in range(len(p.n)):
        lo, hi = int(p.a_off[i]), int(p.a_off[i] + p.h[i] + p.n[i])
        start = max(lo, hi - window)
        out.append(
            StreamState(
                centre=run.c[i : i + 1].copy(),
                hist_x=run.a_x[start:hi].copy(),
                hist_yy=a_yy[start:hi].copy(),
            )
        )
    return tuple(out)
