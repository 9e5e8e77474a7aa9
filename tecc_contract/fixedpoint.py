"""Fixed-point encoding of physical readings into the ring Z_2^64.

A real value ``v`` is encoded as ``round(v * 2^f)`` in two's complement, with
``f`` fraction bits (16 by default, so one LSB is ~1.5e-5). Decoding divides by
``2^f``. Round-trip error is at most half an LSB for every value inside the
declared range.

Validation never clamps: a reading that is not a finite number inside its
sensor's declared physical range is *rejected* with a :class:`RejectReason`,
which the caller counts and logs. Nothing out of range reaches a share.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from tecc_contract.errors import ParameterError, RejectReason
from tecc_contract.ring import RingArray

DEFAULT_FRAC_BITS: Final = 16
#: Largest magnitude a declared sensor range may reach. Keeping |v| < 2^30
#: leaves 2^(63-16-30) = 2^17 headroom, so sums of 131,072 readings and the
#: MPC engine's products of two centred values stay inside the signed ring.
MAX_ABS_RANGE: Final = float(2**30)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """A fixed-point codec with ``frac_bits`` fraction bits over Z_2^64."""

    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 40:
            raise ParameterError(f"frac_bits must be in 0..40, got {self.frac_bits}")

    @property
    def scale(self) -> float:
        """The factor 2^f between a real value and its encoding."""
        return float(1 << self.frac_bits)

    @property
    def lsb(self) -> float:
        """The value of one least-significant bit, 2^-f."""
        return 1.0 / self.scale

    def encode(self, values: FloatArray) -> RingArray:
        """Encode finite floats (already validated) as ring elements.

        Pre-condition: every value is finite and |v| * 2^f < 2^63. Use
        :func:`validate` first on untrusted data.
        """
        arr = np.asarray(values, dtype=np.float64)
        scaled = np.rint(arr * self.scale)
        if scaled.size and not np.all(np.abs(scaled) < 2.0**63):
            raise ParameterError("value too large for the ring at this precision; validate first")
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, encoded: RingArray) -> FloatArray:
        """Decode ring elements (two's complement) back to floats."""
        return np.asarray(encoded, dtype=np.uint64).view(np.int64).astype(np.float64) / self.scale

    def encode_scalar(self, value: float) -> int:
        """Encode one finite float as an unsigned 64-bit ring element."""
        return int(self.encode(np.array([value]))[0])

    def decode_scalar(self, element: int) -> float:
        """Decode one ring element given as an int in [0, 2^64)."""
        return float(self.decode(np.array([element], dtype=np.uint64))[0])


@dataclass(frozen=True, slots=True)
class SensorRange:
    """The declared physical range [low, high] of a sensor, in its unit."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ParameterError(f"sensor range must be finite, got [{self.low}, {self.high}]")
        if self.low >= self.high:
            raise ParameterError(f"sensor range low must be < high, got [{self.low}, {self.high}]")
        if max(abs(self.low), abs(self.high)) > MAX_ABS_RANGE:
            raise ParameterError(
                f"sensor range [{self.low}, {self.high}] exceeds ±2^30; rescale the unit "
                "(e.g. kPa instead of Pa) so sums and products fit the ring"
            )


def classify(value: object, rng: SensorRange) -> float | RejectReason:
    """Check one untrusted reading; return it as a float or the reason to reject it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return RejectReason.NOT_NUMERIC
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        return RejectReason.ABOVE_RANGE if int(value) > 0 else RejectReason.BELOW_RANGE
    if math.isnan(v):
        return RejectReason.NAN
    if math.isinf(v):
        return RejectReason.INFINITE
    if v < rng.low:
        return RejectReason.BELOW_RANGE
    if v > rng.high:
        return RejectReason.ABOVE_RANGE
    return v


@dataclass(frozen=True, slots=True)
class Validation:
    """Result of validating a vector of readings against one sensor range."""

    accepted: BoolArray
    rejected: Counter[RejectReason] = field(default_factory=Counter)


def validate(values: FloatArray, rng: SensorRange) -> Validation:
    """Vectorised :func:`classify` for float64 arrays: mask of accepted values and counts."""
    arr = np.asarray(values, dtype=np.float64)
    nan = np.isnan(arr)
    inf = np.isinf(arr)
    with np.errstate(invalid="ignore"):
        below = ~nan & ~inf & (arr < rng.low)
        above = ~nan & ~inf & (arr > rng.high)
    ok = ~(nan | inf | below | above)
    counts: Counter[RejectReason] = Counter()
    if not ok.all():
        for reason, mask in (
            (RejectReason.NAN, nan),
            (RejectReason.INFINITE, inf),
            (RejectReason.BELOW_RANGE, below),
            (RejectReason.ABOVE_RANGE, above),
        ):
            n = int(mask.sum())
            if n:
                counts[reason] = n
    return Validation(accepted=ok, rejected=counts)
