"""The analytics policy: what the clusters compute and what they may release.

The policy is part of every cluster's enclave measurement
(:mod:`cloud_tecc.enclave.measurement`), through :meth:`AnalyticsPolicy.canonical_bytes`:
a cluster whose policy was edited (say, to release raw readings) no longer
attests. There is deliberately no release item for reading values.
"""

from __future__ import annotations

import enum
import fnmatch
import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from cloud_tecc.errors import CloudConfigError
from tecc_contract.schema import FileSchema, Finite, NonNegative, convert, load_file

#: Largest supported |x| is 2^MAX_VALUE_BITS: keeps every product below 2^62.
MAX_VALUE_BITS = 12
#: Largest detector factor k (k²·2^8 must stay below 2^16).
MAX_K = 16.0

#: A detector factor k in (0, MAX_K].
Factor = Annotated[float, Meta(gt=0, le=MAX_K, description=f"detector factor in (0, {MAX_K}]")]


class Release(enum.StrEnum):
    """An item the output service may reconstruct. Reading values are never an item."""

    COUNT = "count"
    MEAN = "mean"
    STD = "std"
    MIN = "min"
    MAX = "max"
    LIMIT_ALERTS = "limit_alerts"
    ZSCORE_ALERTS = "zscore_alerts"
    RATE_ALERTS = "rate_alerts"
    FLEET = "fleet"


class LimitRule(FileSchema, frozen=True, kw_only=True):
    """Static limits for sensors whose id matches ``sensor`` (fnmatch pattern).

    Rules: low < high.
    """

    sensor: str
    low: Finite
    high: Finite

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(
                f"limit rule {self.sensor!r}: low must be < high, e.g. low: 0, high: 90"
            )


class RateRule(FileSchema, frozen=True, kw_only=True):
    """Rate-of-change limit ``|x_t − x_{t−1}| > max_delta`` for matching sensors."""

    sensor: str
    max_delta: Annotated[float, Meta(gt=0, le=1e300)]


class ZScoreRule(FileSchema, frozen=True, kw_only=True):
    """Rolling z-score: flag ``(x − μ)² > k²·(σ² + min_sigma²)`` over the previous W readings.

    No flag is raised while fewer than ``min_baseline`` previous readings exist.

    Rules: ``min_baseline`` <= ``window``.
    """

    window: Annotated[int, Meta(ge=2, le=100_000)] = 600
    k: Factor = 3.0
    min_sigma: NonNegative = 0.01
    min_baseline: Annotated[int, Meta(ge=1)] = 30

    def __post_init__(self) -> None:
        if self.min_baseline > self.window:
            raise ValueError(
                f"min_baseline ({self.min_baseline}) must be <= window ({self.window})"
            )


class FleetRule(FileSchema, frozen=True, kw_only=True):
    """Sensor classes compared across gateways, and the deviation factor ``k``."""

    classes: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    k: Factor = 3.0
    min_sigma: NonNegative = 0.01


class AnalyticsPolicy(FileSchema, frozen=True, kw_only=True):
    """The analytics policy file (``configs/policy.yaml``); load with :func:`load_policy`.

    ``value_bound_bits`` is the promise the deployment makes about its sensors:
    every reading satisfies |x| < 2^value_bound_bits in its unit. It sizes the
    fixed-point headroom of the secure z-score (see docs/CLOUD.md).

    Rules: limits within ±2^value_bound_bits; every rate ``max_delta`` <
    2^(value_bound_bits+1).
    """

    window_s: Annotated[float, Meta(ge=0.1, le=86_400)] = 10.0
    min_count: Annotated[int, Meta(ge=1)] = 10
    release: frozenset[Release] = frozenset(Release)
    value_bound_bits: Annotated[int, Meta(ge=1, le=MAX_VALUE_BITS)] = 12
    limits: tuple[LimitRule, ...] = ()
    rates: tuple[RateRule, ...] = ()
    zscore: ZScoreRule = ZScoreRule()
    fleet: FleetRule = FleetRule()

    def __post_init__(self) -> None:
        bound = float(2**self.value_bound_bits)
        for i, lim in enumerate(self.limits):
            if max(abs(lim.low), abs(lim.high)) > bound:
                raise ValueError(
                    f"limits[{i}] ({lim.sensor!r}) exceeds ±2^value_bound_bits = ±{bound:g}; "
                    "raise value_bound_bits or narrow the limit"
                )
        for i, rate in enumerate(self.rates):
            if rate.max_delta >= 2 * bound:
                raise ValueError(
                    f"rates[{i}] ({rate.sensor!r}): max_delta must be < 2^(value_bound_bits+1)"
                    f" = {2 * bound:g}"
                )

    @property
    def window_ns(self) -> int:
        """The window length in nanoseconds."""
        return round(self.window_s * 1e9)

    def limit_for(self, sensor_id: str) -> LimitRule | None:
        """The first static-limit rule matching ``sensor_id``, if any."""
        return next((r for r in self.limits if fnmatch.fnmatchcase(sensor_id, r.sensor)), None)

    def rate_for(self, sensor_id: str) -> RateRule | None:
        """The first rate-of-change rule matching ``sensor_id``, if any."""
        return next((r for r in self.rates if fnmatch.fnmatchcase(sensor_id, r.sensor)), None)

    def fleet_class(self, sensor_id: str) -> str | None:
        """The fleet class of ``sensor_id`` (first class with a matching pattern)."""
        for name in sorted(self.fleet.classes):
            if any(fnmatch.fnmatchcase(sensor_id, p) for p in self.fleet.classes[name]):
                return name
        return None

    def allows(self, item: Release) -> bool:
        """Whether ``item`` may be released."""
        return item in self.release

    def canonical_bytes(self) -> bytes:
        """Deterministic bytes of the policy's meaning; input to the measurement."""
        doc: dict[str, Any] = msgspec.to_builtins(self)
        doc["release"] = sorted(r.value for r in self.release)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def policy_from_mapping(raw: object, *, source: str = "policy") -> AnalyticsPolicy:
    """Validate a parsed YAML/JSON policy document; raise :class:`CloudConfigError` on errors."""
    return convert(raw, AnalyticsPolicy, source=source, error=CloudConfigError)


def load_policy(path: Path) -> AnalyticsPolicy:
    """Read and validate a policy file; :class:`CloudConfigError` names the bad key."""
    return load_file(path, AnalyticsPolicy, error=CloudConfigError)
