"""Per-sensor affine scaling: any declared range at full precision in the ring.

The ring holds fixed-point values |x'| < 2^B (B = ``value_bound_bits``, the
analytics policy's bound, ≤ 12). A sensor whose range is 0–24,000 rpm or
0–10^9 counts does not fit in its own unit, so the gateway shares the scaled
value ``x' = (x − offset)·2^−exponent`` instead, with ``(exponent, offset)``
derived deterministically from the declared range by :meth:`Scale.for_range`:

* ``exponent`` e is the smallest integer with ``high − low ≤ 2^(e+1)·(2^B − 1)``,
  so the range spans almost all of ±2^B and one fixed-point LSB is
  ``2^(e−f)`` ≤ ``(high − low)·2^−(B+f)`` (2^−28 of the range at B = 12,
  f = 16);
* ``offset`` is the range's midpoint rounded to a multiple of 2^e, so
  ``|x − offset| ≤ 2^e·(2^B − 1/2)`` for every x in the range and every
  encoding stays below 2^(B+f) (never wraps).

The scale is a power of two, so scaling and unscaling are exact in floating
point apart from the one subtraction; limits and thresholds map into the ring
with the very same :meth:`Scale.encode` as the readings, which is what makes a
reading exactly at a limit behave as the plaintext rule says. The scale is
public metadata (it reveals the declared range to within a factor of two,
never a reading); the envelope header carries it per sensor segment and the
release layout per window, so the output service undoes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from tecc_contract.errors import ParameterError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray

#: Smallest and largest scale exponent (2^−60 … 2^40 per unit of x').
MIN_EXPONENT: Final = -60
MAX_EXPONENT: Final = 40
#: Largest |offset| (a declared range stays within ±2^30).
MAX_OFFSET: Final = float(2**31)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Scale:
    """``x' = (x − offset)·2^−exponent``; the identity is ``Scale()``."""

    exponent: int = 0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not MIN_EXPONENT <= self.exponent <= MAX_EXPONENT:
            raise ParameterError(
                f"scale exponent {self.exponent} not in {MIN_EXPONENT}..{MAX_EXPONENT}"
            )
        if not (math.isfinite(self.offset) and abs(self.offset) <= MAX_OFFSET):
            raise ParameterError(f"scale offset {self.offset} is not finite within ±2^31")
        if not math.ldexp(self.offset, -self.exponent).is_integer():
            raise ParameterError(
                f"scale offset {self.offset} is not a multiple of 2^{self.exponent}"
            )

    @classmethod
    def for_range(cls, low: float, high: float, bits: int) -> Scale:
        """The scale that maps ``[low, high]`` inside ±2^bits (module docstring)."""
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ParameterError(f"a scale needs a finite range low < high, got [{low}, {high}]")
        span = high - low
        cap = float((1 << bits) - 1)

        def fits(e: int) -> bool:
            return span <= math.ldexp(cap, e + 1)

        e = max(MIN_EXPONENT, min(MAX_EXPONENT, math.frexp(span / (2 * cap))[1]))
        while e > MIN_EXPONENT and fits(e - 1):
            e -= 1
        while not fits(e):
            if e == MAX_EXPONENT:
                raise ParameterError(f"range [{low}, {high}] is too wide for a scale")
            e += 1
        codec = FixedPoint()
        while True:
            # the midpoint on the 2^e grid; a range only a few float steps wide can round
            # it off by more than 2^(e-1), so the ends are checked and e raised if needed
            mid = low / 2 + high / 2
            scale = cls(e, math.ldexp(round(math.ldexp(mid, -e)), e))
            if scale.fits(low, bits, codec) and scale.fits(high, bits, codec):
                return scale
            if e == MAX_EXPONENT:
                raise ParameterError(f"range [{low}, {high}] is too wide for a scale")
            e += 1

    @property
    def is_identity(self) -> bool:
        """True for ``x' = x``."""
        return self.exponent == 0 and self.offset == 0.0

    def scaled(self, values: FloatArray) -> FloatArray:
        """``(x − offset)·2^−e`` in float64 (exact but for the subtraction's rounding)."""
        out: FloatArray = np.ldexp(
            np.asarray(values, dtype=np.float64) - self.offset, -self.exponent
        )
        return out

    def encode(self, values: FloatArray, codec: FixedPoint) -> RingArray:
        """Fixed-point ring encodings of ``x'`` (pre-condition: :meth:`fits` holds)."""
        return codec.encode(self.scaled(values))

    def fixed(self, value: float, codec: FixedPoint) -> float:
        """``x'·2^f`` of one value, unrounded (thresholds: the caller rounds or clamps)."""
        return math.ldexp(value - self.offset, codec.frac_bits - self.exponent)

    def fits(self, value: float, bits: int, codec: FixedPoint) -> bool:
        """Whether ``value``'s encoding lies strictly inside ±2^(bits+f) (no wrap)."""
        if abs(value - self.offset) >= math.ldexp(1.0, bits + self.exponent + 1):
            return False
        return abs(round(self.fixed(value, codec))) < 1 << (bits + codec.frac_bits)

    def inner(self, bits: int) -> tuple[float, float]:
        """An interval of values that certainly fit: ``offset ± (2^bits − 1)·2^e``."""
        half = math.ldexp(float((1 << bits) - 1), self.exponent)
        return self.offset - half, self.offset + half

    def value(self, scaled: float) -> float:
        """A position back in the sensor's unit: ``offset + x'·2^e``."""
        return self.offset + math.ldexp(scaled, self.exponent)

    def spread(self, scaled: float) -> float:
        """A spread (std, difference) back in the sensor's unit: ``x'·2^e``."""
        return math.ldexp(scaled, self.exponent)

    def to_json(self) -> list[float]:
        """``[exponent, offset]`` for release layouts."""
        return [self.exponent, self.offset]

    @classmethod
    def from_json(cls, obj: object) -> Scale:
        """Parse :meth:`to_json`; ``None`` (an older layout) is the identity."""
        if obj is None:
            return IDENTITY
        if not (isinstance(obj, list) and len(obj) == 2):
            raise ParameterError(f"a scale is [exponent, offset], got {obj!r}")
        e, off = obj
        if isinstance(e, bool) or not isinstance(e, int) or not isinstance(off, (int, float)):
            raise ParameterError(f"a scale is [exponent, offset], got {obj!r}")
        return cls(e, float(off))


IDENTITY: Final = Scale()
