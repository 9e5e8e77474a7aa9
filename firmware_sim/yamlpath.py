"""Typed access to parsed YAML that reports errors by their YAML path.

:class:`Section` wraps one mapping together with its path (``machines[1].sensors[0]``)
so every type or value error says exactly which key to fix. Unknown keys are
errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from firmware_sim.errors import SimConfigError

E = TypeVar("E", bound=enum.Enum)
_MISSING: Any = object()


def load_yaml(path: Path) -> Section:
    """Parse a YAML file whose top level must be a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SimConfigError(f"config {path} is not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise SimConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SimConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    return Section.of(data, "", source=str(path))


class Section:
    """A YAML mapping plus the dotted path that leads to it."""

    def __init__(self, data: Mapping[str, Any], path: str, source: str) -> None:
        self._data = data
        self.path = path
        self.source = source
        self._used: set[str] = set()

    @classmethod
    def of(cls, data: object, path: str, source: str) -> Section:
        """Wrap ``data`` after checking that it is a mapping with string keys."""
        if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
            raise SimConfigError(f"{source}: {path} must be a mapping of names to values")
        return cls(data, path, source)

    def where(self, key: str) -> str:
        """The full path of ``key`` for error messages."""
        return f"{self.source}: {self.path}.{key}" if self.path else f"{self.source}: {key}"

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (and not null)."""
        return self._data.get(key) is not None

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The untyped value of ``key``; missing keys fail unless a default is given."""
        self._used.add(key)
        value = self._data.get(key)
        if value is None:
            if default is _MISSING:
                near = difflib.get_close_matches(key, [k for k in self._data if k != key], n=1)
                hint = f" (found {near[0]!r}: a typo?)" if near else ""
                raise SimConfigError(f"{self.where(key)} is required{hint}")
            return default
        return value

    def str_(self, key: str, default: Any = _MISSING) -> str:
        """A non-empty string value."""
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            raise SimConfigError(f"{self.where(key)} must be a non-empty string, got {value!r}")
        return value

    def int_(self, key: str, default: Any = _MISSING, *, low: int | None = None) -> int:
        """An integer value, optionally at least ``low``."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SimConfigError(f"{self.where(key)} must be an integer, got {value!r}")
        if low is not None and value < low:
            raise SimConfigError(f"{self.where(key)} must be >= {low}, got {value}")
        return value

    def float_(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        low: float | None = None,
        positive: bool = False,
    ) -> float:
        """A finite number, optionally >= ``low`` or strictly positive."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SimConfigError(f"{self.where(key)} must be a number, got {value!r}")
        out = float(value)
        if not math.isfinite(out):
            raise SimConfigError(f"{self.where(key)} must be finite, got {value!r}")
        if low is not None and out < low:
            raise SimConfigError(f"{self.where(key)} must be >= {low}, got {out}")
        if positive and out <= 0:
            raise SimConfigError(f"{self.where(key)} must be > 0, got {out}")
        return out

    def choice(self, key: str, enum: type[E], default: Any = _MISSING) -> E:
        """A value of the string enum ``enum``; the error lists the allowed values."""
        value = self.raw(key, default)
        if isinstance(value, enum):
            return value
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in enum)
            raise SimConfigError(
                f"{self.where(key)} must be one of {allowed}; got {value!r}"
            ) from None

    def pair(self, key: str, default: Any = _MISSING) -> tuple[float, float]:
        """A two-element list of numbers ``[low, high]`` with low < high."""
        value = self.raw(key, default)
        ok = (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        )
        if not ok:
            raise SimConfigError(f"{self.where(key)} must be [low, high], got {value!r}")
        low, high = float(value[0]), float(value[1])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise SimConfigError(f"{self.where(key)} needs finite low < high, got {value!r}")
        return low, high

    def section(self, key: str, *, optional: bool = False) -> Section:
        """A nested mapping; an absent optional one is empty."""
        value = self.raw(key, {} if optional else _MISSING)
        return Section.of(value, self._sub(key), self.source)

    def sections(self, key: str, *, optional: bool = False) -> Iterator[Section]:
        """The mappings of a YAML list, each with its ``key[i]`` path."""
        value = self.raw(key, [] if optional else _MISSING)
        if not isinstance(value, list):
            raise SimConfigError(f"{self.where(key)} must be a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            yield Section.of(item, f"{self._sub(key)}[{i}]", self.source)

    def check_unknown(self) -> None:
        """Fail on keys that no reader asked for (typos, misplaced options)."""
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            allowed = ", ".join(sorted(self._used)) or "none"
            raise SimConfigError(
                f"{self.where(unknown[0])} is not a known option here (known: {allowed})"
            )

    def _sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key
