"""Inputs of one epoch and the public plan derived from them.

Everything in an :class:`EpochPlan` is public metadata the clusters already
see (gateway and sensor ids, timestamps, counts) combined with the public
policy: per-reading positions, baseline lengths, limits, masks. Both parties
derive the identical plan from identical metadata, so their MPC calls line up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_tecc.analytics.policy import AnalyticsPolicy, Release, zscore_bits
from cloud_tecc.analytics.units import limit_threshold, rate_threshold, to_ring, variance_floor
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray
from tecc_contract.scale import IDENTITY, Scale

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class StreamState:
    """Secret-shared detector state of one (gateway, sensor) stream.

    ``centre`` (one element) is the stream's first reading ever; the z-score
    works on values centred on it so that its second moments stay small.
    ``hist_x`` holds the previous ≤ W readings (oldest first) and ``hist_yy``
    the same readings as the z-score uses them, ``u = ⌊(x − centre)·2^g / 2^f⌋``
    (centred and quantised to ``g`` = :func:`~cloud_tecc.analytics.policy.zscore_bits`
    fraction bits), followed by their exact squares ``u²``: twice as long as
    ``hist_x`` (the name is kept for the stored state's column). A state of
    another length comes from an older release and :meth:`compatible` is false.
    ``scale`` is the sensor scale its values are in (a stream whose scale
    changed starts afresh).
    """

    centre: RingArray
    hist_x: RingArray
    hist_yy: RingArray
    scale: Scale = IDENTITY

    @property
    def compatible(self) -> bool:
        """Whether the state has this release's layout (``hist_yy`` = u then u²)."""
        return len(self.centre) == 1 and len(self.hist_yy) == 2 * len(self.hist_x)

    @property
    def hist_u(self) -> RingArray:
        """The quantised centred readings of the history."""
        return self.hist_yy[: len(self.hist_x)]

    @property
    def hist_uu(self) -> RingArray:
        """Their exact squares."""
        return self.hist_yy[len(self.hist_x) :]


@dataclass(frozen=True, slots=True, eq=False)
class StreamInput:
    """One stream's readings of the epoch (processing order) and its prior state.

    ``q`` is the gateway's x² column (``None`` if the gateway did not send
    it; the program then squares in MPC). ``state`` is ``None`` for a new stream.
    ``scale`` is the sensor scale of ``x`` (from the envelope headers): limits
    and thresholds are mapped into it, the release undoes it.
    """

    gateway: str
    sensor: str
    timestamps_ns: Int64Array
    x: RingArray
    q: RingArray | None
    state: StreamState | None
    scale: Scale = IDENTITY


@dataclass(frozen=True, slots=True)
class EpochInput:
    """All streams with readings in the epoch ``[start_ns, start_ns + window)``."""

    start_ns: int
    streams: tuple[StreamInput, ...]


def reciprocal(counts: IntArray, bits: int) -> RingArray:
    """``round(2^bits / n)`` per count, 0 where ``n == 0``."""
    n = np.asarray(counts, dtype=np.int64)
    out = np.zeros(n.shape, dtype=np.uint64)
    nz = n > 0
    out[nz] = ((np.uint64(1) << np.uint64(bits)) + (n[nz] // 2).astype(np.uint64)) // n[nz].astype(
        np.uint64
    )
    return out


@dataclass(frozen=True, slots=True, eq=False)
class EpochPlan:
    """Public index arrays and constants for one epoch.

    Per stream (index = stream, in ``epoch.streams`` order): ``count`` readings
    in the epoch's window, ``history_len`` stored readings of its history, and
    ``series_offset``, where the stream's history-then-epoch series starts in
    the concatenation of all streams' series. Per reading (processing order):
    ``stream_of`` its stream, ``position`` its index in its stream's series
    and ``baseline_len`` the length of its z-score baseline (≤ W previous
    readings).

    ``zscore_mask``, ``limit_mask`` and ``rate_mask`` mark the readings whose flag is
    computed and released: the rule applies, the policy releases that
    detector and the reading's window has at least ``min_count`` readings.
    ``limit_low``/``limit_high`` are the limits and ``rate_delta_sq_max`` the
    square of the largest allowed step per reading.
    ``zscore_frac_bits`` (g) are the fraction bits of the z-score's quantised readings,
    ``zscore_floor`` per reading the public variance floor ``n²·(min_sigma² + step²)``
    in the units of ``⌊V/2^16⌋`` (V = n·Σu² − (Σu)², n = ``baseline_len``).
    ``flatline_mask`` marks the last reading of each window whose flatline flag
    is computed, ``flatline_span`` per stream the span (0: none) and
    ``flatline_threshold`` its threshold
    ``round(span²·min_std²·2^2g)`` in the units of V itself (compared untruncated).
    ``fleet_class`` is the fleet class index of a stream whose window enters the fleet
    statistics (−1: no class, fleet not released, or a withheld window);
    ``classes`` names every class with a stream in the epoch, released or not,
    and ``class_first_stream`` is each class's first stream.
    A stream whose scale differs from its class's first released stream has
    ``fleet_class`` −1 too. ``fleet_floor`` per class is ``min_sigma²`` as a variance of
    the class's scaled values (a float; :mod:`~cloud_tecc.analytics.fleet` turns it into
    its integer floor). ``minmax_streams`` lists the streams whose min and max are
    computed. Limits, rates and floors are in each stream's
    scaled units (:mod:`cloud_tecc.analytics.units`).
    """

    count: IntArray
    history_len: IntArray
    stream_of: IntArray
    position: IntArray
    series_offset: IntArray
    baseline_len: IntArray
    zscore_mask: BoolArray
    limit_low: RingArray
    limit_high: RingArray
    limit_mask: BoolArray
    rate_delta_sq_max: RingArray
    rate_mask: BoolArray
    fleet_class: IntArray
    classes: tuple[str, ...]
    class_first_stream: IntArray
    minmax_streams: IntArray
    zscore_frac_bits: int
    zscore_floor: RingArray
    flatline_mask: BoolArray
    flatline_span: IntArray
    flatline_threshold: RingArray
    fleet_floor: FloatArray

    @property
    def readings(self) -> int:
        """Readings in the epoch."""
        return int(self.count.sum())


def _limits(
    policy: AnalyticsPolicy, epoch: EpochInput, codec: FixedPoint
) -> tuple[RingArray, RingArray, BoolArray, RingArray, BoolArray]:
    """Per reading: limit and rate thresholds in its stream's ring units (:mod:`.units`)."""
    lo, hi, has_lim, dd, has_rate = [], [], [], [], []
    bits = policy.value_bound_bits
    for s in epoch.streams:
        lim, rate = policy.limit_for(s.sensor), policy.rate_for(s.sensor)
        k, sc = len(s.x), s.scale
        t_lo = limit_threshold(lim.low, sc, bits, codec) if lim else 0
        t_hi = limit_threshold(lim.high, sc, bits, codec) if lim else 0
        lo.append(np.full(k, to_ring(t_lo), dtype=np.uint64))
        hi.append(np.full(k, to_ring(t_hi), dtype=np.uint64))
        has_lim.append(np.full(k, lim is not None))
        d = rate_threshold(rate.max_delta, sc, bits, codec) if rate else 0
        dd.append(np.full(k, to_ring(d * d), dtype=np.uint64))
        has_rate.append(np.full(k, rate is not None))
    cat = np.concatenate
    return cat(lo), cat(hi), cat(has_lim), cat(dd), cat(has_rate)


def _var_units(
    count: IntArray, sigma2: npt.NDArray[np.float64], g: int, shift: int = 16
) -> RingArray:
    """``round(count²·σ²·2^(2g−shift))``: a variance σ² (real units) as ⌊V/2^shift⌋, n = count."""
    c = np.asarray(count, dtype=np.float64)
    return np.rint(c * c * sigma2 * 2.0 ** (2 * g - shift)).astype(np.uint64)


def _flatline(
    policy: AnalyticsPolicy, epoch: EpochInput, n: IntArray, h: IntArray, *, g: int
) -> tuple[BoolArray, IntArray, RingArray]:
    big = n >= policy.min_count
    span = np.zeros(len(n), dtype=np.int64)
    thr = np.zeros(len(n), dtype=np.float64)
    if policy.allows(Release.FLATLINE_ALERTS):
        for i, s in enumerate(epoch.streams):
            rule = policy.flatline_for(s.sensor)
            if rule is not None and big[i] and h[i] + n[i] >= rule.span:
                floor = variance_floor((rule.min_std,), s.scale, policy.value_bound_bits)
                span[i], thr[i] = rule.span, floor
    ends = np.cumsum(n) - 1
    mask = np.zeros(int(n.sum()), dtype=np.bool_)
    mask[ends[span > 0]] = True
    # the flatline test compares the exact V (no truncation): its threshold in units of V
    return mask, span, _var_units(span, thr, g, shift=0)


def make_plan(policy: AnalyticsPolicy, epoch: EpochInput, codec: FixedPoint) -> EpochPlan:
    """Derive the public plan of an epoch (identical at every party)."""
    if not epoch.streams:
        raise ValueError("an epoch plan needs at least one stream")
    w = policy.zscore.window
    n = np.array([len(s.x) for s in epoch.streams], dtype=np.int64)
    h = np.array([len(s.state.hist_x) if s.state else 0 for s in epoch.streams], dtype=np.int64)
    stream_of = np.repeat(np.arange(len(n)), n)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = np.arange(int(n.sum())) - np.repeat(starts, n) + h[stream_of]
    a_off = np.concatenate([[0], np.cumsum(n + h)[:-1]])
    base_n = np.minimum(pos, w)
    lo, hi, limit_mask, dd, rate_mask = _limits(policy, epoch, codec)
    names = [policy.fleet_class(s.sensor) for s in epoch.streams]
    classes = tuple(sorted({c for c in names if c is not None}))
    if not policy.allows(Release.FLEET):
        names, classes = [None] * len(names), ()
    # Flags are computed only where they can be released: the rule applies, the
    # policy releases the detector and the window reaches min_count.
    big = n[stream_of] >= policy.min_count
    want_mm = policy.allows(Release.MIN) or policy.allows(Release.MAX)
    g = zscore_bits(policy.value_bound_bits, w, codec.frac_bits)
    floor2 = np.array(
        [
            variance_floor(
                (policy.zscore.min_sigma, policy.resolution_for(s.sensor)),
                s.scale,
                policy.value_bound_bits,
            )
            for s in epoch.streams
        ]
    )
    flat_mask, flat_span, flat_thr = _flatline(policy, epoch, n, h, g=g)
    # Fleet statistics cover released windows only (issue 13): a withheld window
    # (count < min_count, public) enters no class sum, so no released aggregate
    # differs from a set of released windows by a withheld one.
    cls = np.array(
        [
            classes.index(c) if c is not None and int(k) >= policy.min_count else -1
            for c, k in zip(names, n, strict=True)
        ],
        dtype=np.int64,
    )
    class_first = np.array([int(np.argmax(cls == k)) for k in range(len(classes))], dtype=np.int64)
    cls = _one_scale_per_class(epoch, cls, class_first)
    fleet_floor = np.array(
        [
            variance_floor(
                (policy.fleet.min_sigma,), epoch.streams[i].scale, policy.value_bound_bits
            )
            for i in class_first
        ],
        dtype=np.float64,
    )
    return EpochPlan(
        count=n,
        history_len=h,
        stream_of=stream_of,
        position=pos,
        series_offset=a_off,
        baseline_len=base_n,
        zscore_mask=(base_n >= policy.zscore.min_baseline)
        & big
        & policy.allows(Release.ZSCORE_ALERTS),
        limit_low=lo,
        limit_high=hi,
        limit_mask=limit_mask & big & policy.allows(Release.LIMIT_ALERTS),
        rate_delta_sq_max=dd,
        rate_mask=rate_mask & (pos >= 1) & big & policy.allows(Release.RATE_ALERTS),
        fleet_class=cls,
        classes=classes,
        class_first_stream=class_first,
        minmax_streams=np.flatnonzero((n >= policy.min_count) & want_mm).astype(np.int64),
        zscore_frac_bits=g,
        zscore_floor=_var_units(base_n, floor2[stream_of], g),
        flatline_mask=flat_mask,
        flatline_span=flat_span,
        flatline_threshold=flat_thr,
        fleet_floor=fleet_floor,
    )


def _one_scale_per_class(epoch: EpochInput, cls: IntArray, class_first: IntArray) -> IntArray:
    """Leave out of its class every stream whose scale differs from the class's first one.

    Class sums are meaningful only in one scale (docs/CLOUD.md, "fleet"): the
    class's scale is that of its first released stream in (gateway, sensor)
    order; the output service applies the same rule to the layout
    (:func:`cloud_tecc.analytics.release.class_scales`).
    """
    out = cls.copy()
    for k, first in enumerate(class_first):
        want = epoch.streams[int(first)].scale
        for i in np.flatnonzero(cls == k):
            if epoch.streams[int(i)].scale != want:
                out[i] = -1
    return out


def k2_constants(k: float, min_sigma: float, codec: FixedPoint) -> tuple[int, int]:
    """``(round(k²·2^8), round(min_sigma²·2^f))``: the public constants of a deviation test."""
    return round(k * k * 256), round(min_sigma * min_sigma * codec.scale)


def segment_pairs(lengths: IntArray) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
    """One level of a segmented pairwise tree over contiguous segments.

    Returns ``(left, right, dest_pairs, carry_src, carry_dest)`` indices and the
    next level's segment lengths are ``lengths // 2 + lengths % 2``.
    """
    pairs, odd = lengths // 2, lengths % 2
    off = np.cumsum(lengths) - lengths
    new_len = pairs + odd
    new_off = np.cumsum(new_len) - new_len
    seg = np.repeat(np.arange(len(lengths)), pairs)
    first_pair = np.cumsum(pairs) - pairs
    k = np.arange(int(pairs.sum())) - np.repeat(first_pair, pairs)
    left = off[seg] + 2 * k
    has_carry = np.flatnonzero(odd)
    carry_src = off[has_carry] + lengths[has_carry] - 1
    carry_dest = new_off[has_carry] + pairs[has_carry]
    return left, left + 1, new_off[seg] + k, carry_src, carry_dest
