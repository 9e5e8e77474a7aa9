"""The analytics program of one epoch, written once against :class:`Ops`.

Per stream (gateway, sensor) and epoch it computes the sums Σx and Σx² (the
output service turns released sums into mean and standard deviation), exact
min/max (:mod:`cloud_tecc.analytics.minmax`), and per-reading flags:

* limits: ``(x − low)(x − high) > 0`` — exact, no truncation (computed as
  ``(x − low)² + (low − high)(x − low)``: every product of the program is a square);
* rate of change: ``(x_t − x_{t−1})² > d²`` — exact;
* rolling z-score, the textbook rule against the mean and population variance
  of the previous ``n ≤ W`` readings, in n-scaled integer form on readings
  centred on the stream's first one and quantised to 2^−g
  (``u = ⌊(x − c)·2^g⌋``, :func:`~cloud_tecc.analytics.policy.zscore_bits`):
  ``D = n·u_t − Σu``, ``V = n·Σu² − (Σu)²`` (exact, so V ≥ 0), and the flag is
  ``⌊D/2^8⌋²·2^8 > round(k²·2^8)·(⌊V/2^16⌋ + floor)`` — no reciprocal;
* flatline: per window, ``V < round(span²·min_std²·2^2g)`` over the last
  ``span`` readings of the stream (the same exact V, compared untruncated);
* fleet deviation: a stream's window mean against the mean and variance of
  the released windows of its sensor class in the epoch, in the same exact
  n-scaled form (:mod:`cloud_tecc.analytics.fleet`): the exact ``N·S_s − m·S``
  scaled to N·(x̄ − μ) against the exact ``N·Q − S²`` — no reciprocal enters
  the variance.

Every truncation is one LSB high at most in MPC and exact (floor) in the
plaintext reference; docs/MPC.md ("Analytics") gives the headroom argument
and the error band.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cloud_tecc.analytics import fleet
from cloud_tecc.analytics.detectors import zscore_band_margin
from cloud_tecc.analytics.minmax import segment_minmax
from cloud_tecc.analytics.ops import Ops
from cloud_tecc.analytics.plan import (
    EpochInput,
    EpochPlan,
    IntArray,
    StreamInput,
    StreamState,
    k2_constants,
    make_plan,
    segment_pairs,
)
from cloud_tecc.analytics.policy import AnalyticsPolicy
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray

_U64 = np.uint64
K2_DEN = 256
#: ``D`` is compared as ``⌊D/2^D_SHIFT⌋`` and ``V`` as ``⌊V/2^(2·D_SHIFT)⌋``.
D_SHIFT = 8


@dataclass(frozen=True, slots=True, eq=False)
class EpochOutput:
    """Shares (plaintext in the reference) of everything an epoch computed.

    Per stream: ``sum`` (Σx) and ``sum_sq`` (Σx²) of its window, and
    ``fleet_deviates`` (its fleet-deviation flag; 0 outside a class); per
    stream of ``plan.minmax_streams``: ``min`` and ``max``. Per reading: the
    ``limit``, ``rate``, ``zscore`` and ``flatline`` flags (0 where the plan
    computes none). Per fleet class: ``fleet_sum``, ``fleet_sum_sq`` and
    ``fleet_count`` (readings) over its released windows. ``states`` are the
    streams' new detector states.

    ``margins`` are the inputs to the comparisons (positive means "no flag");
    they exist for the plaintext reference's error analysis and are never
    released or stored. ``margins["zscore_band"]`` bounds, per reading, how far
    from zero the reference's z-score margin can be when the secure flag
    differs from it (docs/MPC.md).
    """

    plan: EpochPlan
    sum: RingArray
    sum_sq: RingArray
    min: RingArray
    max: RingArray
    limit: RingArray
    rate: RingArray
    zscore: RingArray
    flatline: RingArray
    fleet_sum: RingArray
    fleet_sum_sq: RingArray
    fleet_count: IntArray
    fleet_deviates: RingArray
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


def _interleave(first: list[RingArray], second: list[RingArray]) -> RingArray:
    return _cat([v for pair in zip(first, second, strict=True) for v in pair])


class _Run:
    """One evaluation of the program; holds the intermediate arrays."""

    def __init__(self, ops: Ops, policy: AnalyticsPolicy, epoch: EpochInput) -> None:
        if ops.frac_bits < 2 * D_SHIFT:
            raise ValueError(f"the analytics need at least {2 * D_SHIFT} fraction bits")
        self.ops, self.policy, self.epoch = ops, policy, epoch
        self.codec = FixedPoint(ops.frac_bits)
        self.plan = make_plan(policy, epoch, self.codec)
        p = self.plan
        self.x = _cat([s.x for s in epoch.streams])
        centres = [s.state.centre if s.state else s.x[:1] for s in epoch.streams]
        self.c = _cat(centres)
        self.y = self.x - self.c[p.stream_of]
        hist_x = [s.state.hist_x if s.state else np.zeros(0, _U64) for s in epoch.streams]
        self.a_x = _interleave(hist_x, [s.x for s in epoch.streams])
        self.g = p.series_offset[p.stream_of] + p.position
        fleet_read = p.fleet_class[p.stream_of] >= 0
        self.fleet_idx = np.flatnonzero(fleet_read)
        class_first_x = self.x[np.concatenate([[0], np.cumsum(p.count)[:-1]])[p.class_first_stream]]
        self.cc = class_first_x if len(p.classes) else np.zeros(0, _U64)
        self.fcls_read = p.fleet_class[p.stream_of][self.fleet_idx]
        self.yf = self.x[self.fleet_idx] - self.cc[self.fcls_read]
        self.fp = fleet.fleet_plan(policy, p, ops.frac_bits)
        self.fcls = p.fleet_class[self.fp.streams]
        self.uf = np.zeros(0, _U64)
        self.z_idx = np.flatnonzero(p.zscore_mask)
        self.fl = np.flatnonzero(p.flatline_span > 0)
        self.fl_end = p.series_offset[self.fl] + p.history_len[self.fl] + p.count[self.fl]
        need_q = [i for i, s in enumerate(epoch.streams) if s.q is None]
        self.q_idx = np.flatnonzero(np.isin(p.stream_of, need_q))

    async def quantise(self) -> RingArray:
        """Round 1: ``u = ⌊y·2^g / 2^f⌋`` of the epoch's readings, history + epoch per stream.

        In the same round the fleet readings are quantised to their class's g
        (:attr:`uf`; a class with g < 0 takes a second truncation).
        """
        p, ops = self.plan, self.ops
        factor, steps = fleet.quantise_factor(self.fp, self.fcls_read)
        zq = self.y * _U64(1 << p.zscore_frac_bits)
        u, uf = _split(await ops.trunc(_cat([zq, self.yf * factor])), [len(zq), len(self.yf)])
        two = np.flatnonzero(steps == 2)
        if len(two):
            uf[two] = await ops.trunc(uf[two])
        self.uf = uf
        hist_u = [s.state.hist_u if s.state else np.zeros(0, _U64) for s in self.epoch.streams]
        return _interleave(hist_u, _split(u, list(p.count)))

    def with_history_squares(self, uu: RingArray) -> RingArray:
        """The epoch's u² interleaved with the stored squares of the history."""
        hist = [s.state.hist_uu if s.state else np.zeros(0, _U64) for s in self.epoch.streams]
        return _interleave(hist, _split(uu, list(self.plan.count)))


@dataclass(frozen=True, slots=True, eq=False)
class _Sums:
    s1z: RingArray
    dz: RingArray
    s1f: RingArray
    fs: RingArray  # Σu of each fleet stream's window (class quantisation)
    fc: RingArray  # Σu of each class


def _window_sums(run: _Run, a_u: RingArray) -> _Sums:
    """Σu over each z-score baseline and flatline span, and D = n·u_t − Σu (local)."""
    p = run.plan
    cu = _prefix(a_u)
    gz, nz = run.g[run.z_idx], p.baseline_len[run.z_idx]
    s1z = cu[gz] - cu[gz - nz]
    dz = nz.astype(_U64) * a_u[gz] - s1z
    span = p.flatline_span[run.fl]
    s1f = cu[run.fl_end] - cu[run.fl_end - span]
    fs = _segment_sum(run.uf, p.count[run.fp.streams])
    return _Sums(s1z, dz, s1f, fs, fleet.class_sums(fs, run.fp, run.fcls))


async def _products(run: _Run, a_u: RingArray, sums: _Sums) -> dict[str, RingArray]:
    """Round 2: every product of the epoch (u², (Σu)², fleet u² and S², x², limits, diffs).

    All of them are squares (:meth:`Ops.square`: one opening per element
    instead of a Beaver product's two), the limits' too:
    ``(x − lo)(x − hi) = (x − lo)² + (lo − hi)·(x − lo)``, the second term a
    public multiple of a share, so the product is the same ring value.
    """
    p, ops = run.plan, run.ops
    q_idx = run.q_idx
    lim_idx, rate_idx = np.flatnonzero(p.limit_mask), np.flatnonzero(p.rate_mask)
    diff = run.x[rate_idx] - run.a_x[run.g[rate_idx] - 1]
    low = p.limit_low[lim_idx]
    lo = run.x[lim_idx] - ops.public(low)
    xq = run.x[q_idx]
    u = a_u[run.g]  # this epoch's readings (the history's squares are stored)
    names = ["uu", "s1z2", "s1f2", "ufuf", "fc2", "qq", "lim", "diff2"]
    base = [u, sums.s1z, sums.s1f, run.uf, sums.fc, xq, lo, diff]
    sq = await ops.square(_cat(base))
    out = dict(zip(names, _split(sq, [len(a) for a in base]), strict=True))
    out["lim"] += (low - p.limit_high[lim_idx]) * lo
    out["a_uu"] = run.with_history_squares(out["uu"])
    return out


async def _fleet_and_variance(
    run: _Run, pr: dict[str, RingArray], sums: _Sums
) -> dict[str, RingArray]:
    """Rounds 3–4: exact variances V, ⌊D/2^8⌋, ⌊V/2^16⌋; the fleet's ⌊E_s/2^8⌋ and ⌊V/2^16⌋."""
    p, ops, f, fp = run.plan, run.ops, run.ops.frac_bits, run.fp
    cuu = _prefix(pr["a_uu"])
    gz, nz = run.g[run.z_idx], p.baseline_len[run.z_idx].astype(_U64)
    vz = nz * (cuu[gz] - cuu[gz - p.baseline_len[run.z_idx]]) - pr["s1z2"]
    span = p.flatline_span[run.fl]
    vf = span.astype(_U64) * (cuu[run.fl_end] - cuu[run.fl_end - span]) - pr["s1f2"]
    q_c = fleet.class_sums(_segment_sum(pr["ufuf"], fp.window_count), fp, run.fcls)
    v_c = fp.class_count.astype(_U64) * q_c - pr["fc2"]
    e_s = fleet.scaled_deviation(sums.fs, sums.fc, fp, run.fcls)
    v_scale, d_scale = _U64(1 << (f - 2 * D_SHIFT)), _U64(1 << (f - D_SHIFT))
    first = [pr["qq"], sums.dz * d_scale, vz * v_scale, e_s, v_c * v_scale]
    qq, dt, vt, e1, fv = _split(await ops.trunc(_cat(first)), [len(a) for a in first])
    # the flatline's V (< 2^62) is compared as it is: a truncation one LSB high would
    # hide a stuck sensor whose threshold is a few units of ⌊V/2^16⌋
    return {"qq": qq, "dt": dt, "vt": vt, "vft": vf, "ft": await ops.trunc(e1), "fv": fv}


def _compatible(epoch: EpochInput) -> EpochInput:
    """The epoch with states of an older layout or scale dropped (those streams start afresh).

    Every party holds states of the same layout and the same headers, so all
    drop the same ones.
    """

    def ok(s: StreamInput) -> bool:
        return s.state is None or (s.state.compatible and s.state.scale == s.scale)

    if all(ok(s) for s in epoch.streams):
        return epoch
    streams = tuple(s if ok(s) else replace(s, state=None) for s in epoch.streams)
    return EpochInput(epoch.start_ns, streams)


async def run_epoch(ops: Ops, policy: AnalyticsPolicy, epoch: EpochInput) -> EpochOutput:
    """Evaluate the analytics of one epoch; identical call sequence at every party."""
    epoch = _compatible(epoch)
    run = _Run(ops, policy, epoch)
    p = run.plan
    a_u = await run.quantise()
    sums = _window_sums(run, a_u)
    pr = await _products(run, a_u, sums)
    m = await _fleet_and_variance(run, pr, sums)
    q = _cat([s.q if s.q is not None else np.zeros(len(s.x), _U64) for s in epoch.streams])
    q[run.q_idx] = m["qq"]
    fleet_streams = run.fp.streams
    z_idx, lim_idx, rate_idx = run.z_idx, np.flatnonzero(p.limit_mask), np.flatnonzero(p.rate_mask)
    sq_in = [m["ft"], m["dt"]]
    t_sq, dt2 = _split(await ops.square(_cat(sq_in)), [len(a) for a in sq_in])
    k2, _ = k2_constants(policy.zscore.k, 0.0, run.codec)
    k2f, _ = k2_constants(policy.fleet.k, 0.0, run.codec)
    z_margin = (m["vt"] + ops.public(p.zscore_floor[z_idx])) * _U64(k2) - dt2 * _U64(K2_DEN)
    flat_margin = m["vft"] - ops.public(p.flatline_threshold[run.fl])
    flat_band = _flatline_band(m["vft"], p.flatline_span[run.fl])
    fp_pub = replace(run.fp, floor=ops.public(run.fp.floor))
    f_margin, f_band = fleet.margin(m["ft"], t_sq, m["fv"], fp_pub, cls=run.fcls, k2=k2f)
    lim_margin = _U64(0) - pr["lim"]
    rate_margin = ops.public(p.rate_delta_sq_max[rate_idx]) - pr["diff2"]
    xm = _cat([epoch.streams[i].x for i in p.minmax_streams])
    left, right, dest, c_src, c_dst = segment_pairs(p.count[p.minmax_streams])
    mm_diff = xm[left] - xm[right]
    margins = [z_margin, flat_margin, f_margin, lim_margin, rate_margin]
    bits, _, mm_t = await ops.ltz_times(_cat(margins), mm_diff)
    z_flag, flat_flag, f_flag, lim_flag, rate_flag = _split(bits, [len(a) for a in margins])
    mn, mx = await segment_minmax(
        ops, xm, p.count[p.minmax_streams], mm_t, (left, right, dest, c_src, c_dst)
    )
    fleet_dev = np.zeros(len(p.count), dtype=_U64)
    fleet_dev[fleet_streams] = f_flag
    s1 = _segment_sum(run.x, p.count)
    s2 = _segment_sum(q, p.count)
    fleet_s1 = np.array(
        [s1[p.fleet_class == i].sum(dtype=_U64) for i in range(len(p.classes))], _U64
    )
    fleet_s2 = np.array(
        [s2[p.fleet_class == i].sum(dtype=_U64) for i in range(len(p.classes))], _U64
    )
    n_all = p.readings
    band = zscore_band_margin(
        policy,
        p.zscore_frac_bits,
        n=p.baseline_len[z_idx],
        dt=m["dt"],
        vt=m["vt"],
        floor=p.zscore_floor[z_idx],
    )
    return EpochOutput(
        plan=p,
        sum=s1,
        sum_sq=s2,
        min=mn,
        max=mx,
        limit=_scatter(n_all, lim_idx, lim_flag),
        rate=_scatter(n_all, rate_idx, rate_flag),
        zscore=_scatter(n_all, z_idx, z_flag),
        flatline=_scatter(n_all, np.flatnonzero(p.flatline_mask), flat_flag),
        fleet_sum=fleet_s1,
        fleet_sum_sq=fleet_s2,
        fleet_count=run.fp.class_count,
        fleet_deviates=fleet_dev,
        states=_new_states(run, a_u, pr["a_uu"], policy.zscore.window),
        margins={
            "zscore": _scatter(n_all, z_idx, z_margin),
            "zscore_band": _scatter(n_all, z_idx, band),
            "flatline": _scatter(n_all, np.flatnonzero(p.flatline_mask), flat_margin),
            "flatline_band": _scatter(n_all, np.flatnonzero(p.flatline_mask), flat_band),
            "fleet": f_margin,
            "fleet_band": f_band,
            "limit": _scatter(n_all, lim_idx, lim_margin),
            "rate": _scatter(n_all, rate_idx, rate_margin),
        },
    )


def _flatline_band(v: RingArray, span: IntArray) -> RingArray:
    """Bound on |V_MPC − V_reference| of the flatline test (plaintext only; docs/MPC.md §9).

    MPC's quantised readings are u + e with e ∈ {0, 1}, which moves
    V = s·Σu² − (Σu)² by at most ``2·s·sqrt(V) + s²/4`` (s = span).
    """
    s = span.astype(np.float64)
    root = np.sqrt(np.maximum(v.view(np.int64).astype(np.float64), 0.0))
    return np.minimum(np.ceil(2 * s * root + s * s / 4), 2.0**62).astype(_U64)


def _new_states(run: _Run, a_u: RingArray, a_uu: RingArray, window: int) -> tuple[StreamState, ...]:
    p = run.plan
    out = []
    for i in range(len(p.count)):
        lo, hi = int(p.series_offset[i]), int(p.series_offset[i] + p.history_len[i] + p.count[i])
        start = max(lo, hi - window)
        out.append(
            StreamState(
                centre=run.c[i : i + 1].copy(),
                hist_x=run.a_x[start:hi].copy(),
                hist_yy=np.concatenate([a_u[start:hi], a_uu[start:hi]]),
                scale=run.epoch.streams[i].scale,
            )
        )
    return tuple(out)
