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
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from cloud_tecc.errors import ConfigError
from tecc_contract.fixedpoint import DEFAULT_FRAC_BITS

_R = TypeVar("_R", "LimitRule", "RateRule", "ResolutionRule", "FlatlineRule")

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
    FLATLINE_ALERTS = "flatline_alerts"


@dataclass(frozen=True, slots=True)
class LimitRule:
    """Static limits for sensors whose id matches ``sensor`` (fnmatch pattern)."""

    sensor: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ConfigError(f"limit rule {self.sensor!r}: need finite low < high")


@dataclass(frozen=True, slots=True)
class RateRule:
    """Rate-of-change limit ``|x_t − x_{t−1}| > max_delta`` for matching sensors."""

    sensor: str
    max_delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_delta) and self.max_delta > 0):
            raise ConfigError(f"rate rule {self.sensor!r}: max_delta must be > 0")


@dataclass(frozen=True, slots=True)
class ResolutionRule:
    """Declared resolution ``step`` of matching sensors: a noise floor of the z-score.

    ``step²`` is added to the baseline variance, so a change smaller than
    ``k·step`` (one quantisation step of the sensor) never raises a flag.
    """

    sensor: str
    step: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step) and self.step > 0):
            raise ConfigError(f"resolutions rule {self.sensor!r}: step must be > 0")


@dataclass(frozen=True, slots=True)
class FlatlineRule:
    """Flatline/stuck detector: flag a window whose last ``span`` readings have std < ``min_std``.

    Evaluated once per released window, at its last reading, over the stream's
    last ``span`` readings (this window and the stored history).
    """

    sensor: str
    span: int
    min_std: float

    def __post_init__(self) -> None:
        if not (isinstance(self.span, int) and self.span >= 2):
            raise ConfigError(f"flatline rule {self.sensor!r}: span must be an integer >= 2")
        if not (math.isfinite(self.min_std) and self.min_std > 0):
            raise ConfigError(f"flatline rule {self.sensor!r}: min_std must be > 0")


@dataclass(frozen=True, slots=True)
class ZScoreRule:
    """Rolling z-score: flag ``(x − μ)² > k²·(σ² + min_sigma² + step²)``, previous W readings.

    μ and σ² are the mean and population variance of the previous n = min(p, W)
    readings (the textbook rule, computed exactly on readings quantised to
    2^−g, :func:`zscore_bits`); ``step`` is the sensor's declared resolution
    (:class:`ResolutionRule`, 0 if none). No flag is raised while fewer than
    ``min_baseline`` previous readings exist.
    """

    window: int = 600
    k: float = 3.0
    min_sigma: float = 0.01
    min_baseline: int = 30

    def __post_init__(self) -> None:
        if not 2 <= self.window <= 100_000:
            raise ConfigError(f"zscore.window must be in 2..100000, got {self.window}")
        if not (math.isfinite(self.k) and 0 < self.k <= MAX_K):
            raise ConfigError(f"zscore.k must be in (0, {MAX_K}], got {self.k}")
        if not (math.isfinite(self.min_sigma) and self.min_sigma >= 0):
            raise ConfigError("zscore.min_sigma must be >= 0")
        if not 1 <= self.min_baseline <= self.window:
            raise ConfigError("zscore.min_baseline must be in 1..window")


@dataclass(frozen=True, slots=True)
class FleetRule:
    """Sensor classes compared across gateways, and the deviation factor ``k``."""

    classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    k: float = 3.0
    min_sigma: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k) and 0 < self.k <= MAX_K):
            raise ConfigError(f"fleet.k must be in (0, {MAX_K}], got {self.k}")


@dataclass(frozen=True, slots=True)
class AnalyticsPolicy:
    """Validated analytics policy; build with :func:`policy_from_mapping`.

    ``value_bound_bits`` is the promise the deployment makes about its sensors:
    every reading satisfies |x| < 2^value_bound_bits in its unit. It sizes the
    fixed-point headroom of the secure z-score (see docs/CLOUD.md).
    """

    window_s: float = 10.0
    min_count: int = 10
    release: frozenset[Release] = frozenset(Release)
    value_bound_bits: int = 12
    limits: tuple[LimitRule, ...] = ()
    rates: tuple[RateRule, ...] = ()
    zscore: ZScoreRule = ZScoreRule()
    fleet: FleetRule = FleetRule()
    resolutions: tuple[ResolutionRule, ...] = ()
    flatline: tuple[FlatlineRule, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and 0.1 <= self.window_s <= 86_400):
            raise ConfigError(f"window_s must be in [0.1, 86400], got {self.window_s}")
        if self.min_count < 1:
            raise ConfigError("min_count must be >= 1")
        if not 1 <= self.value_bound_bits <= MAX_VALUE_BITS:
            raise ConfigError(f"value_bound_bits must be in 1..{MAX_VALUE_BITS} (docs/CLOUD.md)")
        bound = float(2**self.value_bound_bits)
        for lim in self.limits:
            if max(abs(lim.low), abs(lim.high)) > bound:
                raise ConfigError(f"limit rule {lim.sensor!r} exceeds ±2^value_bound_bits")
        for rate in self.rates:
            if rate.max_delta >= 2 * bound:
                raise ConfigError(f"rate rule {rate.sensor!r}: max_delta must be < 2^(bits+1)")
        self._check_zscore_headroom(bound / 2)

    def _check_zscore_headroom(self, half: float) -> None:
        w, b = self.zscore.window, self.value_bound_bits
        if zscore_bits(b, w) < 0:
            raise ConfigError(
                f"zscore.window {w} with value_bound_bits {b} overflows the ring: the exact "
                f"variance needs 2·(value_bound_bits + ⌈log2 window⌉) <= {ZSCORE_RING_BITS} "
                f"bits; write zscore.window <= {2 ** (ZSCORE_RING_BITS // 2 - b)} or a smaller "
                "value_bound_bits (docs/MPC.md, Analytics)"
            )
        if self.zscore.min_sigma > half:
            raise ConfigError(f"zscore.min_sigma must be <= 2^(value_bound_bits-1) = {half:g}")
        for res in self.resolutions:
            if res.step > half:
                raise ConfigError(f"resolutions rule {res.sensor!r}: step must be <= {half:g}")
        for fl in self.flatline:
            if fl.span > w:
                raise ConfigError(
                    f"flatline rule {fl.sensor!r}: span {fl.span} must be <= zscore.window {w} "
                    "(the history the clusters keep)"
                )
            if fl.min_std > half:
                raise ConfigError(f"flatline rule {fl.sensor!r}: min_std must be <= {half:g}")

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
        doc = asdict(self)
        doc["release"] = sorted(r.value for r in self.release)
        doc["fleet"]["classes"] = {k: list(v) for k, v in sorted(self.fleet.classes.items())}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _rules(raw: object, cls: type[_R], what: str) -> tuple[_R, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(f"policy {what} must be a list of mappings")
    try:
        return tuple(cls(**item) for item in raw)
    except TypeError as exc:
        raise ConfigError(f"policy {what}: {exc}") from exc


def policy_from_mapping(raw: Mapping[str, Any]) -> AnalyticsPolicy:
    """Validate a parsed YAML/JSON policy document; raise :class:`ConfigError` on errors."""
    known = {"window_s", "min_count", "release", "value_bound_bits", "limits", "rates"}
    known |= {"zscore", "fleet", "resolutions", "flatline"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown policy keys {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        release = frozenset(Release(r) for r in raw.get("release", [r.value for r in Release]))
    except ValueError as exc:
        allowed = [r.value for r in Release]
        raise ConfigError(f"policy release: {exc}; allowed items: {allowed}") from exc
    fleet_raw = dict(raw.get("fleet") or {})
    classes = {str(k): tuple(str(p) for p in v) for k, v in (fleet_raw.pop("classes", {})).items()}
    try:
        return AnalyticsPolicy(
            window_s=float(raw.get("window_s", 10.0)),
            min_count=int(raw.get("min_count", 10)),
            release=release,
            value_bound_bits=int(raw.get("value_bound_bits", 12)),
            limits=_rules(raw.get("limits"), LimitRule, "limits"),
            rates=_rules(raw.get("rates"), RateRule, "rates"),
            zscore=ZScoreRule(**(raw.get("zscore") or {})),
            fleet=FleetRule(classes=classes, **fleet_raw),
            resolutions=_rules(raw.get("resolutions"), ResolutionRule, "resolutions"),
            flatline=_rules(raw.get("flatline"), FlatlineRule, "flatline"),
        )
    except TypeError as exc:
        raise ConfigError(f"invalid policy: {exc}") from exc
