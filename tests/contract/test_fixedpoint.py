"""Fixed-point codec and reading validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tecc_contract.errors import ParameterError, RejectReason
from tecc_contract.fixedpoint import FixedPoint, SensorRange, classify, validate

RANGE = SensorRange(-1000.0, 1000.0)
CODEC = FixedPoint()


@given(st.lists(st.floats(min_value=-1000.0, max_value=1000.0), min_size=1, max_size=200))
def test_round_trip_within_half_lsb(values: list[float]) -> None:
    """Every value in the declared range decodes to within half an LSB."""
    arr = np.array(values)
    decoded = CODEC.decode(CODEC.encode(arr))
    assert np.all(np.abs(decoded - arr) <= CODEC.lsb / 2 + 1e-12)


@given(st.integers(min_value=0, max_value=40), st.floats(min_value=-1000.0, max_value=1000.0))
def test_round_trip_any_precision(frac_bits: int, value: float) -> None:
    """The half-LSB bound holds at every supported precision."""
    codec = FixedPoint(frac_bits)
    assert abs(codec.decode_scalar(codec.encode_scalar(value)) - value) <= codec.lsb / 2 + 1e-9


def test_negative_values_are_twos_complement() -> None:
    """-1 LSB is the ring element 2^64 − 1."""
    assert CODEC.encode_scalar(-CODEC.lsb) == 2**64 - 1
    assert CODEC.decode_scalar(2**64 - 1) == -CODEC.lsb


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12.5", RejectReason.NOT_NUMERIC),
        (None, RejectReason.NOT_NUMERIC),
        (True, RejectReason.NOT_NUMERIC),
        (float("nan"), RejectReason.NAN),
        (float("inf"), RejectReason.INFINITE),
        (float("-inf"), RejectReason.INFINITE),
        (1000.5, RejectReason.ABOVE_RANGE),
        (-1e9, RejectReason.BELOW_RANGE),
        (10**400, RejectReason.ABOVE_RANGE),
        (-(10**400), RejectReason.BELOW_RANGE),
    ],
)
def test_classify_rejects_with_reason(raw: object, reason: RejectReason) -> None:
    """Each kind of bad reading gets its own reason; nothing is clamped."""
    assert classify(raw, RANGE) is reason


def test_classify_accepts_limits() -> None:
    """The declared limits themselves are valid readings."""
    assert classify(1000, RANGE) == 1000.0
    assert classify(np.float32(-1000.0), RANGE) == -1000.0


def test_validate_counts_each_reason() -> None:
    """The vectorised check agrees with classify and counts per reason."""
    arr = np.array([1.0, np.nan, np.inf, -np.inf, 2000.0, -2000.0, 999.0, np.nan])
    v = validate(arr, RANGE)
    assert v.accepted.tolist() == [True, False, False, False, False, False, True, False]
    assert v.rejected == {
        RejectReason.NAN: 2,
        RejectReason.INFINITE: 2,
        RejectReason.ABOVE_RANGE: 1,
        RejectReason.BELOW_RANGE: 1,
    }
    for x, ok in zip(arr, v.accepted, strict=True):
        assert isinstance(classify(float(x), RANGE), float) == ok


@pytest.mark.parametrize(
    ("low", "high"), [(1.0, 1.0), (2.0, 1.0), (math.nan, 1.0), (0.0, math.inf), (0.0, 2.0**31)]
)
def test_bad_ranges_are_config_errors(low: float, high: float) -> None:
    """A sensor range must be finite, ordered and fit the ring's headroom."""
    with pytest.raises(ParameterError):
        SensorRange(low, high)


def test_encode_refuses_unvalidated_overflow() -> None:
    """Encoding a value that does not fit the ring raises rather than wrapping."""
    with pytest.raises(ParameterError):
        CODEC.encode(np.array([1e300]))


def test_default_and_bounds_of_frac_bits() -> None:
    """16 fraction bits by default (docs/ARCHITECTURE.md); 0 and 40 allowed, -1 and 41 not."""
    assert FixedPoint().frac_bits == 16
    assert int(FixedPoint().encode(np.array([1.0]))[0]) == 2**16
    assert FixedPoint(0).scale == 1.0
    assert FixedPoint(40).scale == 2.0**40
    for bad in (-1, 41):
        with pytest.raises(ParameterError, match=r"frac_bits must be in 0\.\.40"):
            FixedPoint(bad)


def test_encode_refuses_exactly_2_pow_63() -> None:
    """|v| · 2^16 reaching 2^63 does not fit the signed ring: 2^47 fails, 2^47 − 1 encodes."""
    codec = FixedPoint()
    with pytest.raises(ParameterError, match="too large"):
        codec.encode(np.array([2.0**47]))
    with pytest.raises(ParameterError, match="too large"):
        codec.encode(np.array([-(2.0**47)]))
    assert codec.decode(codec.encode(np.array([2.0**47 - 1])))[0] == 2.0**47 - 1


def test_range_limit_and_edges_are_inclusive() -> None:
    """A range may reach ±2^30 exactly; a reading equal to low or high is accepted."""
    SensorRange(-(2.0**30), 2.0**30)
    with pytest.raises(ParameterError, match="exceeds"):
        SensorRange(0.0, 2.0**30 + 1)
    rng = SensorRange(-1.0, 1.0)
    check = validate(np.array([-1.0, 1.0, -1.0000001, 1.0000001]), rng)
    assert check.accepted.tolist() == [True, True, False, False]
    assert check.rejected == {RejectReason.BELOW_RANGE: 1, RejectReason.ABOVE_RANGE: 1}
    assert (classify(-1.0, rng), classify(1.0, rng)) == (-1.0, 1.0)
    assert classify(10**400, rng) is RejectReason.ABOVE_RANGE
    assert classify(-(10**400), rng) is RejectReason.BELOW_RANGE
