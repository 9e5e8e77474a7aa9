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
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS
from tecc_contract.schema import FileSchema, Finite, NonNegative, convert, load_file

#: Largest supported |x| is 2^MAX_VALUE_BITS: keeps every product below 2^62.
MAX_VALUE_BITS = 12
#: Largest detector factor k (k²·2^8 must stay below 2^16).
MAX_K = 16.0

#: Ring bits the z-score's exact variance ``n·Σu² − (Σu)²`` may use (trunc needs < 2^62).
ZSCORE_RING_BITS = 62


def zscore_bits(value_bits: int, window: int, frac_bits: int = DEFAULT_FRAC_BITS) -> int:
    """Fraction bits ``g`` of the z-score's quantised values (docs/MPC.md, "Analytics").

    The variance is computed exactly as ``V = n·Σu² − (Σu)²`` on readings
    quantised to 2^−g, for n ≤ W; V ≤ n²·2^(2B+2g) must stay below 2^62, so
    ``g = min(f, 31 − B − ⌈log2 W⌉)``. Negative means no resolution fits.
    """
    return min(frac_bits, ZSCORE_RING_BITS // 2 - value_bits - (window - 1).bit_length())


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
    FLATLINE_ALERTS = "flatline_alerts"
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


class ResolutionRule(FileSchema, frozen=True, kw_only=True):
    """Declared resolution ``step`` of matching sensors: a noise floor of the z-score.

    ``step²`` is added to the baseline variance, so a change smaller than
    ``k·step`` (one quantisation step of the sensor) never raises a flag.
    """

    sensor: str
    step: Annotated[float, Meta(gt=0, le=1e300)]


class FlatlineRule(FileSchema, frozen=True, kw_only=True):
    """Flatline/stuck detector: flag a window whose last ``span`` readings have std < ``min_std``.

    Evaluated once per released window, at its last reading, over the stream's
    last ``span`` readings (this window and the stored history).
    """

    sensor: str
    span: Annotated[int, Meta(ge=2, le=100_000)]
    min_std: Annotated[float, Meta(gt=0, le=1e300)]


class ZScoreRule(FileSchema, frozen=True, kw_only=True):
    """Rolling z-score: flag ``(x − μ)² > k²·(σ² + min_sigma² + step²)``, previous W readings.

    μ and σ² are the mean and population variance of the previous n = min(p, W)
    readings (the textbook rule, computed exactly on readings quantised to
    2^−g, :func:`zscore_bits`); ``step`` is the sensor's declared resolution
    (:class:`ResolutionRule`, 0 if none). No flag is raised while fewer than
    ``min_baseline`` previous readings exist.

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
    resolutions: tuple[ResolutionRule, ...] = ()
    flatline: tuple[FlatlineRule, ...] = ()

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
        self._check_zscore_headroom(bound / 2)

    def _check_zscore_headroom(self, half: float) -> None:
        w, b = self.zscore.window, self.value_bound_bits
        if zscore_bits(b, w) < 0:
            raise ValueError(
                f"zscore.window {w} with value_bound_bits {b} overflows the ring: the exact "
                f"variance needs 2·(value_bound_bits + ⌈log2 window⌉) <= {ZSCORE_RING_BITS} "
                f"bits; write zscore.window <= {2 ** (ZSCORE_RING_BITS // 2 - b)} or a smaller "
                "value_bound_bits (docs/MPC.md, Analytics)"
            )
        if self.zscore.min_sigma > half:
            raise ValueError(f"zscore.min_sigma must be <= 2^(value_bound_bits-1) = {half:g}")
        if self.fleet.min_sigma > half:
            raise ValueError(f"fleet.min_sigma must be <= 2^(value_bound_bits-1) = {half:g}")
        for i, res in enumerate(self.resolutions):
            if res.step > half:
                raise ValueError(f"resolutions[{i}] ({res.sensor!r}): step must be <= {half:g}")
        for i, fl in enumerate(self.flatline):
            if fl.span > w:
                raise ValueError(
                    f"flatline[{i}] ({fl.sensor!r}): span {fl.span} must be <= zscore.window "
                    f"{w} (the history the clusters keep)"
                )
            if fl.min_std > half:
                raise ValueError(f"flatline[{i}] ({fl.sensor!r}): min_std must be <= {half:g}")

    @property
    def zscore_bits(self) -> int:
        """Fraction bits of the z-score's and flatline detector's quantised readings."""
        return zscore_bits(self.value_bound_bits, self.zscore.window)

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

    def resolution_for(self, sensor_id: str) -> float:
        """The declared resolution of ``sensor_id`` (first matching rule), 0 if none."""
        rule = next((r for r in self.resolutions if fnmatch.fnmatchcase(sensor_id, r.sensor)), None)
        return rule.step if rule else 0.0

    def flatline_for(self, sensor_id: str) -> FlatlineRule | None:
        """The first flatline rule matching ``sensor_id``, if any."""
        return next((r for r in self.flatline if fnmatch.fnmatchcase(sensor_id, r.sensor)), None)

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
