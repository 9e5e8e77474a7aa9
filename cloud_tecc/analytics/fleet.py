"""The fleet-deviation flag in n-scaled integer form, variance exact (docs/MPC.md, "Analytics").

A released stream s (m readings in the window, window mean x̄) deviates from
its sensor class (N readings of the class's released windows in the epoch,
mean μ, population variance σ²) when ``(x̄ − μ)² > k²·(σ² + min_sigma²)``.
Readings centred on the class's first reading are quantised once to 2^−g,
``u = ⌊(x − c)·2^g⌋``; with ``S_s = Σ_s u``, ``S = Σ_class u``, ``Q = Σ_class u²``
(exact ring products and sums; values and σ₀² = min_sigma² in the class's
scale, :mod:`cloud_tecc.analytics.units`)::

    D_s = N·S_s − m·S             (= m·N·(x̄ − μ) in units of 2^−g, exact)
    V   = N·Q − S²                (= N²·σ² in units of 2^−2g, exact, never negative)
    E_s = D_s·round(2^24/m)/2^24  (≈ N·(x̄ − μ): the z-score's D with n = N)
    flag ⇔ 2^8·⌊E_s/2^8⌋² > round(k²·2^8)·(⌊V/2^16⌋ + F),  F = round(N²·σ₀²·2^(2g−16))

— the rolling z-score's comparison with n = N. No reciprocal enters the
variance, so nothing can make it negative or cancel (the old rule's
``round(2^16/N)`` times Σy² minus μ² did); the one rounded constant scales
the exact difference D_s, which moves |x̄ − μ| by a relative m/2^25 at most
(< 2^−13 for windows up to 4,096 readings; exact when m is a power of two).
``g = min(f, 31 − B − ⌈log2 N⌉)`` keeps V < 2^62, as the z-score's g does
with W; a class with g < 0 (N > 2^(31−B)) is quantised in two truncations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_tecc.analytics.plan import EpochPlan, IntArray, reciprocal
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.errors import AnalyticsError
from tecc_contract.ring import RingArray

_U64 = np.uint64
#: ``E_s/2^8 = D_s·round(2^24/m) / 2^32``: two truncations of the engine (16 bits each).
RECIP_BITS = 24
#: Largest window of one stream in a fleet class: D_s·round(2^24/m) < 2^62 needs m·… ≤ 2^38.
MAX_WINDOW = 1 << 24


@dataclass(frozen=True, slots=True, eq=False)
class FleetPlan:
    """Public per-class constants of the fleet test (index = class) and its streams."""

    class_count: IntArray  # N: readings of the class's released windows
    quant_bits: IntArray  # g: quantisation bits of the class
    floor: RingArray  # F = round(N²·σ₀²·2^(2g−16))
    streams: IntArray  # the streams whose window enters a class (plan.fleet_class >= 0)
    window_count: IntArray  # m: their window counts
    recip: RingArray  # round(2^24/m) per stream


def fleet_plan(policy: AnalyticsPolicy, plan: EpochPlan, frac_bits: int) -> FleetPlan:
    """The public constants of every class of the epoch (identical at every party)."""
    k = len(plan.classes)
    streams = np.flatnonzero(plan.fleet_class >= 0).astype(np.int64)
    lengths = plan.count[streams]
    if (lengths > MAX_WINDOW).any():
        raise AnalyticsError(
            f"a fleet class has a window of more than {MAX_WINDOW} readings of one stream; "
            "shorten window_s"
        )
    n = np.array([int(plan.count[plan.fleet_class == i].sum()) for i in range(k)], dtype=np.int64)
    log_n = np.array([(int(v) - 1).bit_length() for v in n], dtype=np.int64)
    g = np.minimum(frac_bits, 31 - policy.value_bound_bits - log_n)
    if (g < -frac_bits).any():
        raise AnalyticsError("a fleet class has too many readings per epoch; shorten window_s")
    nf = n.astype(np.float64)
    # min_sigma² in each class's scale (plan.fleet_floor, from the class's first stream)
    floor = np.rint(nf * nf * plan.fleet_floor * np.exp2(2.0 * g - 16)).astype(_U64)
    scale = reciprocal(lengths, RECIP_BITS)
    return FleetPlan(
        class_count=n,
        quant_bits=g,
        floor=floor,
        streams=streams,
        window_count=lengths,
        recip=scale,
    )


def quantise_factor(fp: FleetPlan, cls_of_reading: IntArray) -> tuple[RingArray, IntArray]:
    """Per fleet reading, the public factor before the first truncation and the truncations.

    ``u = ⌊y·2^g / 2^f⌋`` is one truncation of ``y·2^g`` for g ≥ 0 and two of
    ``y·2^(f+g)`` for g < 0 (f = 16).
    """
    g = fp.quant_bits[cls_of_reading]
    factor = np.where(g >= 0, np.exp2(g), np.exp2(16 + g)).astype(_U64)
    return factor, np.where(g >= 0, 1, 2).astype(np.int64)


def class_sums(values: RingArray, fp: FleetPlan, cls_of_stream: IntArray) -> RingArray:
    """Per class the sum of per-stream values (mod 2^64)."""
    out = np.zeros(len(fp.class_count), dtype=_U64)
    np.add.at(out, cls_of_stream, values)
    return out


def scaled_deviation(
    s_stream: RingArray, s_class: RingArray, fp: FleetPlan, cls: IntArray
) -> RingArray:
    """``D_s·round(2^24/m)`` per fleet stream (local); two truncations give ⌊E_s/2^8⌋."""
    n = fp.class_count[cls].astype(_U64)
    d = n * s_stream - fp.window_count.astype(_U64) * s_class[cls]
    out: RingArray = d * fp.recip
    return out


def margin(
    t: RingArray, t_sq: RingArray, vt: RingArray, fp: FleetPlan, *, cls: IntArray, k2: int
) -> tuple[RingArray, RingArray]:
    """The comparison margin (negative: deviates) and, for plaintext, a bound on its MPC error.

    ``t = ⌊E_s/2^8⌋`` (two truncations) and ``vt = ⌊V/2^16⌋`` (one) may each be
    high by one LSB per truncation in MPC, so the margin moves by at most
    ``2^8·(4|t| + 4) + k2`` (the bound is meaningful on plaintext only).
    """
    out: RingArray = _U64(k2) * (vt[cls] + fp.floor[cls]) - t_sq * _U64(256)
    absd = np.abs(t.view(np.int64)).astype(np.float64)
    band = 256.0 * (4.0 * absd + 4.0) + k2
    return out, np.minimum(np.ceil(band), 2.0**62).astype(_U64)
