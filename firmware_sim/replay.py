"""Replay mode: a CSV of ``timestamp,value`` rows becomes a sensor.

Timestamps are epoch seconds or ISO 8601 (naive = UTC); they must not go
backwards. An optional header row ``timestamp,value`` is skipped. Rows are
published at their recorded spacing divided by ``speed``; with ``rebase`` the
first row is stamped with the rebase time and the rest keep their offsets,
otherwise the recorded timestamps are published unchanged. Values are sent as
recorded, even when non-finite or out of range.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from firmware_sim.clock import SimClock
from firmware_sim.config import SensorSpec
from firmware_sim.errors import ReplayError
from firmware_sim.runner import Sink
from firmware_sim.sample import Sample


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """One recorded reading."""

    ts: float
    value: float


def parse_timestamp(text: str) -> float:
    """Epoch seconds from ``"1764230400.5"`` or ``"2025-11-27T08:00:00.5+00:00"``."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def read_csv(path: Path) -> list[ReplayRow]:
    """All rows of a replay CSV; errors name the file and line."""
    rows: list[ReplayRow] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for lineno, cells in enumerate(csv.reader(fh), start=1):
                if not cells or not "".join(cells).strip():
                    continue
                if lineno == 1 and cells[0].strip().lower() in {"timestamp", "ts", "time"}:
                    continue
                rows.append(_row(path, lineno, cells, rows[-1].ts if rows else -math.inf))
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path} is not UTF-8 text: {exc}") from exc
    if not rows:
        raise ReplayError(f"{path} has no data rows; expected lines of 'timestamp,value'")
    return rows


def _row(path: Path, lineno: int, cells: list[str], previous: float) -> ReplayRow:
    if len(cells) != 2:
        raise ReplayError(f"{path}:{lineno}: expected 'timestamp,value', got {len(cells)} fields")
    try:
        ts = parse_timestamp(cells[0])
    except ValueError:
        raise ReplayError(f"{path}:{lineno}: bad timestamp {cells[0]!r}") from None
    try:
        value = float(cells[1])
    except ValueError:
        raise ReplayError(f"{path}:{lineno}: bad value {cells[1]!r}") from None
    if not math.isfinite(ts) or ts < previous:
        raise ReplayError(f"{path}:{lineno}: timestamp {cells[0]!r} goes backwards")
    return ReplayRow(ts, value)


async def replay(
    rows: Sequence[ReplayRow],
    *,
    spec: SensorSpec,
    sink: Sink,
    speed: float = 1.0,
    rebase: float | None = None,
    clock: SimClock | None = None,
) -> int:
    """Publish ``rows`` as sensor ``spec`` paced by their timestamps; returns the count."""
    first = rows[0].ts
    shift = 0.0 if rebase is None else rebase - first
    clock = clock or SimClock(first, speed=speed)
    clock.begin()
    for seq, row in enumerate(rows):
        await clock.sleep_until(row.ts)
        await sink.publish(spec, Sample(spec.sensor_id, seq, row.ts + shift, row.value))
    await sink.close()
    return len(rows)
