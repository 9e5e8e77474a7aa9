"""Deterministic fixtures for the contract tests: keys, seeded randomness, batches.

The fixtures themselves live in :mod:`fuzzing.fixtures` (the fuzz targets,
which ``bench/`` runs too, use the same ones).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from fuzzing.fixtures import (
    ed25519_from_seed,
    keys_for,
    make_system,
    regular_segment,
    seeded_random_bytes,
)

__all__ = [
    "chi_square_bytes",
    "ed25519_from_seed",
    "keys_for",
    "make_system",
    "regular_segment",
    "seeded_random_bytes",
]


def chi_square_bytes(data: npt.NDArray[np.uint64]) -> tuple[float, float]:
    """Chi-square statistic of the byte histogram of ``data`` and its p=1e-6 critical value."""
    counts = np.bincount(np.frombuffer(data.tobytes(), dtype=np.uint8), minlength=256)
    expected = counts.sum() / 256.0
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = 255
    z = 4.753424  # standard normal quantile for 1 - 1e-6
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3  # Wilson–Hilferty
    return stat, critical
