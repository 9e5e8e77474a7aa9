"""Analytics policy validation at its exact boundaries (each case kills a bench.mutation mutant)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from cloud_tecc.analytics.policy import MAX_VALUE_BITS, policy_from_mapping
from cloud_tecc.errors import CloudConfigError


def _refused(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(CloudConfigError, match=match):
        policy_from_mapping(raw)


def test_defaults_are_the_documented_ones() -> None:
    """An empty policy: 10 s windows, min_count 10, 12 value bits, everything released."""
    p = policy_from_mapping({})
    assert (p.window_s, p.min_count, p.value_bound_bits) == (10.0, 10, 12)


def test_window_and_count_bounds_are_inclusive() -> None:
    """window_s in [0.1, 86400] and min_count >= 1; one step outside is refused."""
    assert policy_from_mapping({"window_s": 0.1}).window_ns == 100_000_000
    assert policy_from_mapping({"window_s": 86_400}).window_s == 86_400
    for bad in (0.09, 86_400.5, math.inf, math.nan):
        _refused({"window_s": bad}, r"\$\.window_s")
    assert policy_from_mapping({"min_count": 1}).min_count == 1
    _refused({"min_count": 0}, r"\$\.min_count: Expected `int` >= 1")


def test_value_bits_bound_the_scaled_values_not_the_units() -> None:
    """value_bound_bits 1..max; limits and rates are in the sensor's unit, any magnitude.

    Fails on the code before this change: limits beyond ±2^bits and rates beyond
    2^(bits+1) were refused (a 0–24,000 rpm limit could not be written).
    """
    policy_from_mapping({"value_bound_bits": 1})
    policy_from_mapping({"value_bound_bits": MAX_VALUE_BITS})
    for bad in (0, MAX_VALUE_BITS + 1):
        _refused({"value_bound_bits": bad}, r"\$\.value_bound_bits")
    bits = {"value_bound_bits": 4}
    p = policy_from_mapping({**bits, "limits": [{"sensor": "*", "low": 0.0, "high": 22_000.0}]})
    assert p.limits[0].high == 22_000.0
    p = policy_from_mapping({**bits, "rates": [{"sensor": "*", "max_delta": 1e9}]})
    assert p.rates[0].max_delta == 1e9


def test_bad_rule_arguments_are_config_errors() -> None:
    """An unknown field inside zscore or fleet is a CloudConfigError naming the policy."""
    _refused({"zscore": {"windw": 5}}, r"\$\.zscore\.windw: unknown key")
    _refused({"fleet": {"kk": 1}}, r"\$\.fleet\.kk: unknown key")


def test_canonical_bytes_are_sorted_and_include_fleet_classes() -> None:
    """The measurement input lists fleet classes sorted; equal policies give equal bytes."""
    a = policy_from_mapping({"fleet": {"classes": {"b": ["*.b"], "a": ["*.a"]}}})
    b = policy_from_mapping({"fleet": {"classes": {"a": ["*.a"], "b": ["*.b"]}}})
    assert a.canonical_bytes() == b.canonical_bytes()
    doc = json.loads(a.canonical_bytes())
    assert list(doc) == sorted(doc)
    assert doc["fleet"]["classes"] == {"a": ["*.a"], "b": ["*.b"]}
    assert list(doc["fleet"]["classes"]) == ["a", "b"]
