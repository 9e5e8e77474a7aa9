"""Policy thresholds in a stream's scale, and released sums back in the sensor's unit.

A stream's scale is its sensor's :class:`~tecc_contract.scale.Scale`.

The policy states limits, rates and noise floors in the sensor's unit; the
ring holds ``X = round((x − offset)·2^(f−e))`` (|X| < 2^(B+f), B =
``value_bound_bits``). Every threshold is mapped with the same arithmetic as
the readings, so each comparison inside the MPC equals the physical rule on
the encoded readings:

* a limit L becomes ``T = round((L − offset)·2^(f−e))`` — exactly the
  encoding of a reading equal to L, so a reading *at* the limit never flags
  (``X < T_low`` or ``X > T_high``), one more than an LSB beyond it always
  does, and the rounding is monotone in between. T is clamped to
  ``±(2^(B+f) + 1)``, beyond every encoding, so a limit outside the sensor's
  scale keeps its meaning and the product ``(X − T_low)(X − T_high)`` stays
  below 2^60;
* a rate ``|x_t − x_{t−1}| > d`` becomes ``|ΔX| > ⌊d·2^(f−e)⌋`` (exact for
  integer ΔX), clamped to 2^(B+f+1) (no difference reaches it);
* a variance floor σ² (``min_sigma² + step²``, ``min_std²``) becomes
  ``σ²·2^(−2e)``, clamped to 2^(2B−2) (a floor of half the scaled range,
  where the headroom argument of docs/MPC.md §9 stops; such a floor means
  the detector can hardly fire anyway).

The way back: :func:`moments` turns released scaled sums into mean and std
in the sensor's unit (the variance exactly in integers), and
:func:`class_members` is the one rule for which windows enter a fleet class
(one scale per class), shared by the layout check and the output service.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from cloud_tecc.analytics.layout import FleetEntry, WindowEntry
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.errors import AnalyticsError
from tecc_contract.errors import ParameterError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.scale import IDENTITY, Scale

FloatArray = npt.NDArray[np.float64]


def limit_threshold(value: float, scale: Scale, bits: int, codec: FixedPoint) -> int:
    """A limit as the signed ring integer a reading at it encodes to (clamped)."""
    cap = (1 << (bits + codec.frac_bits)) + 1
    d = value - scale.offset
    if abs(d) >= math.ldexp(1.0, bits + scale.exponent + 1):  # beyond every reading
        return cap if d > 0 else -cap
    return int(np.rint(scale.fixed(value, codec)))


def rate_threshold(max_delta: float, scale: Scale, bits: int, codec: FixedPoint) -> int:
    """``⌊max_delta·2^(f−e)⌋``, clamped to 2^(B+f+1)."""
    cap = 1 << (bits + codec.frac_bits + 1)
    if max_delta >= math.ldexp(1.0, bits + scale.exponent + 1):
        return cap
    return math.floor(math.ldexp(max_delta, codec.frac_bits - scale.exponent))


def variance_floor(sigmas: tuple[float, ...], scale: Scale, bits: int) -> float:
    """``Σσ²`` (σ in the sensor's unit) as a variance of scaled values, clamped to 2^(2B−2)."""
    cap = float(1 << (2 * bits - 2))
    half = math.ldexp(1.0, bits - 1 + scale.exponent)
    if any(s >= half for s in sigmas):
        return cap
    return min(sum(math.ldexp(s, -scale.exponent) ** 2 for s in sigmas), cap)


def to_ring(signed: int) -> int:
    """A signed integer as a ring element (two's complement)."""
    return signed % (1 << 64)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def moments(
    total: int, total_sq: int | None, n: int, codec: FixedPoint, scale: Scale
) -> tuple[float, float]:
    """Released scaled sums (ring ints) to mean and population std in the sensor's unit.

    The variance is formed exactly in integers, ``n·Σq·2^f − (Σx)²`` over
    ``n²·2^(2f)`` (q = round(X²/2^f), the gateway's square column), so no
    float cancellation can magnify a rounding; then the scale is undone.
    """
    s1 = _signed(total)
    mean = scale.value(s1 / (n * codec.scale))
    if total_sq is None:
        return mean, math.nan
    num = n * _signed(total_sq) * (1 << codec.frac_bits) - s1 * s1
    var = max(num, 0) / (n * n * codec.scale * codec.scale)
    return mean, scale.spread(math.sqrt(var))


def window_scale(entry: WindowEntry | FleetEntry) -> Scale:
    """The scale a release-layout entry names (``"scale": [e, offset]``; absent: identity)."""
    try:
        return IDENTITY if entry.scale is None else Scale(*entry.scale)
    except ParameterError as exc:
        raise AnalyticsError(f"malformed scale in release layout: {exc}") from exc


def class_members(policy: AnalyticsPolicy, windows: Iterable[WindowEntry]) -> set[tuple[str, str]]:
    """The (gateway, sensor) windows that enter their fleet class's sums.

    A released window (≥ ``min_count``) of a class, in the scale of the
    class's first released window in layout order — the plan's rule: a
    class's sums are meaningful in one scale only.
    """
    scales: dict[str, Scale] = {}
    out: set[tuple[str, str]] = set()
    for w in windows:
        name = policy.fleet_class(w.sensor)
        if name is None or w.count < policy.min_count:
            continue
        if scales.setdefault(name, window_scale(w)) == window_scale(w):
            out.add((w.gateway, w.sensor))
    return out
