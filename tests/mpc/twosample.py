"""Two-sample χ² tests per coordinate, for comparing recorded views (no scipy).

Samples are ``(runs, coordinates)`` uint8 matrices (a view flattened to bytes,
one row per run). Every byte coordinate is tested twice, on the histograms of
its high and of its low nibble (16 bins each): a two-sample χ² test of
homogeneity with ``bins used − 1`` degrees of freedom. The threshold is
Bonferroni-corrected over all tests, so a family-wise error of ``alpha`` holds
whatever the number of coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (series / continued fraction)."""
    if x <= 0.0:
        return 1.0
    log_pre = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_pre))
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(log_pre) * h


def chi2_sf(stat: float, dof: int) -> float:
    """P(χ²_dof > stat)."""
    return _gamma_q(dof / 2.0, stat / 2.0)


def chi2_critical(p: float, dof: int) -> float:
    """The ``stat`` with ``chi2_sf(stat, dof) = p`` (bisection)."""
    lo, hi = 0.0, 10.0 * dof + 200.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if chi2_sf(mid, dof) > p:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True, slots=True)
class Result:
    """Outcome of the per-coordinate tests of one pair of samples."""

    tests: int
    threshold_p: float
    rejected: list[tuple[int, str, float]]  # (byte coordinate, nibble, statistic)
    worst_ratio: float  # largest statistic / its critical value over all tests

    @property
    def distinguishable(self) -> bool:
        """True if any coordinate's test rejected equality of the distributions."""
        return bool(self.rejected)


def _nibble_stats(a: U8, b: U8) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """χ² statistic and degrees of freedom per coordinate for 16-bin histograms."""
    runs, coords = a.shape
    cols = np.arange(coords)
    ha = np.zeros((coords, 16), dtype=np.int64)
    hb = np.zeros((coords, 16), dtype=np.int64)
    for r in range(runs):
        ha[cols, a[r]] += 1
        hb[cols, b[r]] += 1
    tot = ha + hb
    with np.errstate(divide="ignore", invalid="ignore"):
        terms: Any = np.where(tot > 0, (ha - hb) ** 2 / np.maximum(tot, 1), 0.0)
    return terms.sum(axis=1), (tot > 0).sum(axis=1) - 1


def compare(a: U8, b: U8, *, alpha: float = 1e-3) -> Result:
    """Test every byte coordinate of two equal-size samples of views for equal distribution.

    For equal sample sizes the two-sample χ² statistic is Σ (A − B)² / (A + B)
    over the bins either sample hit.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError("samples must be (runs, coordinates) of the same shape")
    four, low = np.uint8(4), np.uint8(15)
    parts = {"high": (a >> four, b >> four), "low": (a & low, b & low)}
    n_tests = 2 * a.shape[1]
    p = alpha / n_tests
    crit = {d: chi2_critical(p, d) for d in range(1, 16)}
    crit_of = np.array([np.inf] + [crit[d] for d in range(1, 16)])
    rejected: list[tuple[int, str, float]] = []
    worst = 0.0
    for name, (xa, xb) in parts.items():
        stat, dof = _nibble_stats(xa, xb)
        ratio = stat / crit_of[dof]
        worst = max(worst, float(ratio.max(initial=0.0)))
        rejected += [(int(j), name, float(stat[j])) for j in np.flatnonzero(ratio > 1.0)]
    return Result(n_tests, p, rejected, worst)
