"""Replay mode: a CSV recording becomes one sensor (see docs/SIMULATOR.md, "Replay").

Three pure steps and one paced loop:

* :func:`read_csv` turns the file into :class:`ReplayRow` s in file order. The
  time and value columns are chosen by header name (``time_column``,
  ``value_column``) or default to the first two columns; a first row in which
  no cell is a number is a header. Timestamps are epoch seconds or ISO 8601
  (naive = UTC).
* Disorder (a stamp equal to or older than the previous row's: a repeated
  daylight-saving hour, duplicated rows) is an explicit choice,
  :class:`Disorder`: ``reject`` fails with the file and line, ``keep`` keeps
  the file order and moves each such stamp to ``NUDGE_S`` after the previous
  one, so no two readings share a stamp and the stream stays ordered (the
  gateway's event-time progress relies on that). Every nudge is counted in
  :class:`Recording`.
* :func:`timeline` decides, per row, when it is published (seconds after the
  replay starts) and which stamp it carries (:class:`Timing`): ``recorded``
  keeps the recorded stamps (history: the pipeline must run in backfill
  mode), paced at the recorded spacing divided by ``speed`` (``inf`` = as
  fast as the transport takes them); ``rebase`` compresses the recorded
  spacing by ``speed`` and stamps each row with the wall time it goes out;
  ``respace`` publishes one row every ``respace_s`` seconds, stamped likewise.
  In both live modes the stamps follow the replay clock, so nothing is in
  the future and nothing is late.
* :func:`replay` publishes the rows through a simulator sink.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from firmware_sim.clock import SimClock
from firmware_sim.config import SensorSpec
from firmware_sim.errors import ReplayError
from firmware_sim.runner import Sink
from firmware_sim.sample import Sample

#: The step by which ``keep`` moves a repeated or backwards stamp past its predecessor,
#: and the smallest spacing of published stamps (float seconds in a JSON payload resolve
#: 1e-6 s at today's epoch; an OPC-UA DateTime 1e-7 s).
NUDGE_S: Final = 1e-3
TIME_NAMES: Final = ("timestamp", "ts", "time", "datetime", "date")


class Disorder(enum.StrEnum):
    """What to do with a stamp that repeats or precedes the previous row's."""

    REJECT = "reject"
    KEEP = "keep"


class Timing(enum.StrEnum):
    """Which stamps a replay publishes (see the module docstring)."""

    RECORDED = "recorded"
    REBASE = "rebase"
    RESPACE = "respace"


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """One recorded reading (``ts`` after disorder handling)."""

    ts: float
    value: float


@dataclass(frozen=True, slots=True)
class Recording:
    """The rows of a CSV in file order and what disorder handling changed."""

    rows: list[ReplayRow]
    repeated: int = 0  # stamps equal to the previous row's, nudged
    backwards: int = 0  # stamps older than the previous row's, nudged
    first_nudged_line: int | None = None

    @property
    def nudged(self) -> int:
        """Rows whose stamp ``keep`` moved."""
        return self.repeated + self.backwards

    def describe(self) -> str:
        """One line for the user: how many rows, the span, and any nudges."""
        first, last = self.rows[0].ts, self.rows[-1].ts
        span = f"{_iso(first)} .. {_iso(last)} ({(last - first) / 86400:.1f} days)"
        text = f"{len(self.rows)} rows, {span}"
        if self.nudged:
            text += (
                f"; {self.repeated} repeated and {self.backwards} backwards stamps moved "
                f"forward by {NUDGE_S * 1e3:g} ms (first at line {self.first_nudged_line})"
            )
        return text


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


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


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Columns:
    time: int
    value: int
    width: int | None  # fields every row must have (None: at least max(time, value) + 1)


def _columns(
    path: Path, header: list[str] | None, time_column: str | None, value_column: str | None
) -> _Columns:
    if header is None:
        if time_column or value_column:
            raise ReplayError(
                f"{path} has no header row, so --time-column/--column cannot name a column; "
                "add a header line or leave the options out"
            )
        return _Columns(0, 1, 2)
    names = [h.strip().lower() for h in header]

    def find(name: str, option: str) -> int:
        if name.lower() not in names:
            raise ReplayError(
                f"{path}:1: no column {name!r} for {option}; the header has {', '.join(header)}"
            )
        return names.index(name.lower())

    if time_column:
        t = find(time_column, "--time-column")
    else:
        t = next((names.index(n) for n in TIME_NAMES if n in names), 0)
    if value_column:
        v = find(value_column, "--column")
    elif "value" in names:
        v = names.index("value")
    elif len(names) == 2:
        v = 1 - t
    else:
        raise ReplayError(
            f"{path}:1: {len(names)} columns and none named 'value': choose one with --column "
            f"(the header has {', '.join(header)})"
        )
    if t == v:
        raise ReplayError(f"{path}:1: the time and value columns are the same ({header[t]!r})")
    return _Columns(t, v, None if len(names) != 2 else 2)


def read_csv(
    path: Path,
    *,
    on_disorder: Disorder = Disorder.REJECT,
    time_column: str | None = None,
    value_column: str | None = None,
) -> Recording:
    """All rows of a replay CSV in file order; errors name the file and line."""
    rows: list[ReplayRow] = []
    repeated = backwards = 0
    first_nudged: int | None = None
    cols: _Columns | None = None
    previous = -math.inf
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            for lineno, cells in enumerate(csv.reader(fh), start=1):
                if not cells or not "".join(cells).strip():
                    continue
                if cols is None:
                    header = None if any(_is_number(c) for c in cells) else cells
                    cols = _columns(path, header, time_column, value_column)
                    if header is not None:
                        continue
                ts, value = _row(path, lineno, cells, cols)
                if ts <= previous:
                    if on_disorder is Disorder.REJECT:
                        what = "goes backwards" if ts < previous else "repeats the previous one"
                        raise ReplayError(
                            f"{path}:{lineno}: timestamp {cells[cols.time].strip()!r} {what}; "
                            "pass --on-disorder keep to keep the file order and move such "
                            f"stamps {NUDGE_S * 1e3:g} ms past the previous one"
                        )
                    if ts == previous:
                        repeated += 1
                    else:
                        backwards += 1
                    first_nudged = first_nudged or lineno
                    ts = previous + NUDGE_S
                previous = ts
                rows.append(ReplayRow(ts, value))
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise ReplayError(f"{path}: not a CSV file: {exc}") from exc
    if not rows:
        raise ReplayError(f"{path} has no data rows; expected lines of 'timestamp,value'")
    return Recording(rows, repeated, backwards, first_nudged)


def _row(path: Path, lineno: int, cells: list[str], cols: _Columns) -> tuple[float, float]:
    need = max(cols.time, cols.value) + 1
    if (cols.width is not None and len(cells) != cols.width) or len(cells) < need:
        want = "'timestamp,value'" if cols.width == 2 else f"at least {need} fields"
        raise ReplayError(f"{path}:{lineno}: expected {want}, got {len(cells)} fields")
    raw_ts, raw_value = cells[cols.time], cells[cols.value]
    try:
        ts = parse_timestamp(raw_ts)
    except ValueError:
        raise ReplayError(f"{path}:{lineno}: bad timestamp {raw_ts!r}") from None
    if not math.isfinite(ts):
        raise ReplayError(f"{path}:{lineno}: bad timestamp {raw_ts!r}")
    try:
        value = float(raw_value)
    except ValueError:
        raise ReplayError(f"{path}:{lineno}: bad value {raw_value!r}") from None
    return ts, value


@dataclass(frozen=True, slots=True)
class Slot:
    """When a row goes out (seconds after the replay began) and the stamp it carries."""

    due_s: float
    ts: float
    value: float


def check_timing(timing: Timing, speed: float, respace_s: float | None) -> None:
    """Refuse a speed or spacing that cannot be replayed; the message names the option."""
    if not speed > 0:
        raise ReplayError(f"--speed must be > 0 (or inf), got {speed}")
    if timing is Timing.RESPACE and not (respace_s is not None and respace_s >= NUDGE_S):
        raise ReplayError(f"--respace must be at least {NUDGE_S} seconds, got {respace_s}")


def timeline(
    rows: Sequence[ReplayRow],
    *,
    timing: Timing = Timing.RECORDED,
    speed: float = 1.0,
    respace_s: float | None = None,
    base: float = 0.0,
) -> list[Slot]:
    """Publication times and stamps of ``rows`` (pure; ``base`` = wall time of the start).

    ``recorded``: stamp = the row's, due at (ts - first) / speed. ``rebase``:
    due likewise, stamp = base + due. ``respace``: due = k * respace_s, stamp =
    base + due. Live stamps are kept at least ``NUDGE_S`` apart (a compressed
    spacing may fall below what a payload resolves).
    """
    check_timing(timing, speed, respace_s)
    first = rows[0].ts if rows else 0.0
    out: list[Slot] = []
    stamp = -math.inf
    for k, row in enumerate(rows):
        if timing is Timing.RESPACE:
            due = k * (respace_s or NUDGE_S)
        else:
            due = 0.0 if math.isinf(speed) else (row.ts - first) / speed
        if timing is Timing.RECORDED:
            stamp = row.ts
        else:
            stamp = max(base + due, stamp + NUDGE_S)
            due = stamp - base
        out.append(Slot(due, stamp, row.value))
    return out


async def replay(
    rows: Sequence[ReplayRow],
    *,
    spec: SensorSpec,
    sink: Sink,
    timing: Timing = Timing.RECORDED,
    speed: float = 1.0,
    respace_s: float | None = None,
    wall: Callable[[], float] = time.time,
) -> int:
    """Publish ``rows`` as sensor ``spec`` on :func:`timeline`; returns the count.

    Live stamps start from ``wall()`` read when pacing begins, so a row's stamp
    is the wall time it is due (the transports connected before this call).
    """
    check_timing(timing, speed, respace_s)
    clock = SimClock(0.0)  # paces offsets from "now"; never anchored to the wall clock
    clock.begin()
    slots = timeline(rows, timing=timing, speed=speed, respace_s=respace_s, base=wall())
    for seq, slot in enumerate(slots):
        await clock.sleep_until(slot.due_s)
        await sink.publish(spec, Sample(spec.sensor_id, seq, slot.ts, slot.value))
    await sink.close()
    return len(slots)
