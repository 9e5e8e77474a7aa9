"""The per-sensor scale: every declared range fits the ring at full precision, and the
header carries it exactly (version 2)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tecc_contract.envelope import read_header
from tecc_contract.errors import FrameError, ParameterError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.header import Column, EnvelopeHeader, SegmentMeta, decode_header
from tecc_contract.keys import KemSuite
from tecc_contract.scale import IDENTITY, Scale
from tests.contract.helpers import make_system, regular_segment

CODEC = FixedPoint()
ENDS = st.floats(min_value=-(2.0**30), max_value=2.0**30, allow_nan=False)


@given(ENDS, ENDS, st.integers(min_value=1, max_value=12))
def test_every_declared_range_fits_with_the_smallest_exponent(
    a: float, b: float, bits: int
) -> None:
    """Both ends (and so, by monotony, every value) fit strictly inside ±2^(B+f); one
    exponent less would not fit the span: the resolution is ≤ 2^−(B+f−1) of the range.
    Fails on the code before this change (no scale: |x| < 2^B in the unit)."""
    low, high = min(a, b), max(a, b)
    if not high - low > 2.0**-40:
        return
    sc = Scale.for_range(low, high, bits)
    assert sc.fits(low, bits, CODEC)
    assert sc.fits(high, bits, CODEC)
    enc = sc.encode(np.array([low, high]), CODEC).view(np.int64)
    assert np.all(np.abs(enc) < 2 ** (bits + CODEC.frac_bits))
    if sc.exponent > -60 and high - low >= 2.0**-30 * max(1.0, abs(low), abs(high)):
        # (a range only a few float steps wide may need a larger exponent: its midpoint
        # does not lie on the finer grid)
        assert high - low > math.ldexp(2.0**bits - 1, sc.exponent)  # minimal
        lsb = math.ldexp(1.0, sc.exponent - CODEC.frac_bits)
        assert lsb <= (high - low) * 2.0 ** -(bits + CODEC.frac_bits - 1)


def test_the_example_ranges_reach_2_to_the_minus_28_of_their_width() -> None:
    """0–24,000 rpm, −40–125 °C, 0–10^7 Pa, 0–10^9 counts: one LSB ≤ 2^−28 of the range."""
    for low, high in ((0.0, 24_000.0), (-40.0, 125.0), (0.0, 1e7), (0.0, 1e9)):
        sc = Scale.for_range(low, high, 12)
        assert math.ldexp(1.0, sc.exponent - 16) / (high - low) <= 2.0**-28
        assert (sc.value(0.0), sc.spread(1.0)) == (sc.offset, 2.0**sc.exponent)


def test_a_scale_must_be_canonical() -> None:
    """Exponent within bounds, offset finite and on the 2^e grid."""
    for bad in ((99, 0.0), (0, math.inf), (0, 0.5), (-1, 0.25)):
        with pytest.raises(ParameterError):
            Scale(*bad)
    assert Scale(-1, 0.5).value(2.0) == 1.5
    assert Scale.from_json(None) == IDENTITY
    with pytest.raises(ParameterError):
        Scale.from_json([1.5, 0.0])


def _header(scale: Scale) -> EnvelopeHeader:
    ts = 1_700_000_000_000_000_000 + np.arange(3, dtype=np.int64)
    return EnvelopeHeader(
        gateway_id="gw",
        seq=1,
        n_parties=2,
        party=0,
        vector_party=0,
        suite=KemSuite.X25519,
        columns=(Column.VALUE,),
        frac_bits=16,
        created_ns=1,
        segments=(SegmentMeta("rpm", ts, scale),),
    )


@given(ENDS, ENDS)
def test_the_header_carries_the_scale_exactly(a: float, b: float) -> None:
    """Header version 2 round-trips every derived scale bit for bit."""
    if not abs(a - b) > 2.0**-40:
        return
    sc = Scale.for_range(min(a, b), max(a, b), 12)
    h = _header(sc)
    assert decode_header(h.encode()) == h


def test_a_header_with_a_bad_scale_is_a_frame_error() -> None:
    """An exponent out of bounds or an offset off its grid is refused when decoding."""
    good = _header(Scale(3, 8.0)).encode()
    packed = struct.pack("<bd", 3, 8.0)
    assert good.count(packed) == 1
    for bad in (struct.pack("<bd", 100, 8.0), struct.pack("<bd", 3, 9.0)):
        with pytest.raises(FrameError, match="scale"):
            decode_header(good.replace(packed, bad))


def test_set_scales_applies_to_the_next_batch() -> None:
    """A gateway's config reload gives the sealer the new sensors' scales.

    Fails on the code before this change: the sealer kept the scales it was
    built with, so a sensor added by reload was shared unscaled.
    """
    sealer, _, _ = make_system()
    frame = sealer.seal(1, [regular_segment("new", 4)], created_ns=1)[0]
    assert read_header(frame).segments[0].scale == IDENTITY
    wide = Scale.for_range(0.0, 24000.0, 12)
    sealer.set_scales({"new": wide})
    frame = sealer.seal(2, [regular_segment("new", 4)], created_ns=1)[0]
    assert read_header(frame).segments[0].scale == wide
