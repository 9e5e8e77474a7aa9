"""Error band of the secure z-score against the textbook rule (docs/MPC.md, "Analytics").

The textbook rule flags a reading x when ``|x − μ| > k·σ_eff`` with μ, σ² the
mean and population variance of the previous n readings and
``σ_eff² = σ² + min_sigma² + step²``. The program evaluates it exactly on
readings quantised to 2^−g and compares ``⌊D/2^8⌋`` and ``⌊V/2^16⌋``
(:mod:`cloud_tecc.analytics.program`); each step moves ``|x − μ|`` or
``σ_eff`` by a bounded amount, so its flag can differ from the textbook's
only for readings with ``| |x − μ| − k·σ_eff | ≤ band``:

* quantisation (floor; +1 LSB at most in MPC): ``|x − μ|`` by < 2·2^−g,
  σ by ≤ 2^−g (the population std is a seminorm);
* ``⌊D/2^8⌋``: ``|x − μ|`` by < 2^(8−g)/n;
* ``⌊V/2^16⌋`` and the rounded floor: σ_eff by ≤ 2·2^(8−g)/n;
* ``k_eff = sqrt(round(k²·2^8)/2^8)`` instead of k: ``|k_eff − k|·σ_eff``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from cloud_tecc.analytics.policy import AnalyticsPolicy
from tecc_contract.ring import RingArray

FloatArray = npt.NDArray[np.float64]


def k_effective(k: float) -> float:
    """The factor the program really uses: ``sqrt(round(k²·2^8) / 2^8)``."""
    return math.sqrt(round(k * k * 256) / 256)


def zscore_band(k: float, g: int, n: npt.ArrayLike, sigma_eff: npt.ArrayLike) -> FloatArray:
    """Band (real units, on ``|x − μ|`` against ``k·σ_eff``) outside which flags are exact."""
    nn = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    ke = k_effective(k)
    lsb, tr = 2.0**-g, 2.0 ** (8 - g) / nn
    out: FloatArray = (
        2 * lsb + tr + ke * (lsb + 2 * tr) + abs(ke - k) * np.asarray(sigma_eff, np.float64)
    )
    return out


def zscore_band_margin(
    policy: AnalyticsPolicy,
    g: int,
    *,
    n: npt.NDArray[np.int64],
    dt: RingArray,
    vt: RingArray,
    floor: RingArray,
) -> RingArray:
    """Per reading, a bound on |reference margin| wherever the secure flag may differ.

    Meaningful on plaintext values only (the reference); the secure run computes
    it on shares and never uses it. Reference and secure run each lie within the
    band of the textbook rule, so they can differ only within twice the band.
    """
    nn = np.maximum(n.astype(np.float64), 1.0)
    scale = nn * 2.0 ** (g - 8)  # D/2^8 = scale·(x − μ), V/2^16 = scale²·σ²
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(dt.view(np.int64).astype(np.float64)) / scale
        var = (vt.view(np.int64).astype(np.float64) + floor.astype(np.float64)) / scale**2
        sigma = np.sqrt(np.maximum(var, 0.0))
        k = policy.zscore.k
        b2 = 2 * zscore_band(k, g, nn, sigma)
        bound = 256 * scale**2 * b2 * (k_effective(k) * sigma + d + b2)
        bound = np.nan_to_num(np.ceil(bound), nan=2.0**62, posinf=2.0**62)
    out: RingArray = np.minimum(bound, 2.0**62).astype(np.uint64)
    return out
