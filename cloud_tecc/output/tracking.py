"""Feed one reconstructed epoch through the incident tracker (pure; the store persists it).

:func:`track` takes the epoch's released rows and the incidents currently
live (pending, open or acknowledged) and returns every incident it touched
plus, for each flag of the epoch, the key of the incident it belongs to and
whether the flag is kept for drill-down (at most ``max_flags`` per incident:
a sensor stuck in alarm grows a counter, not the table).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud_tecc.analytics.release import Decoded
from cloud_tecc.output.incidents import (
    Incident,
    Rules,
    WindowStats,
    on_flag,
    on_progress,
    shift_positions,
)

Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class FlagRow:
    """One flagged reading to store (duplicates of a timestamp stay distinct rows)."""

    gateway: str
    sensor: str
    detector: str
    ts_ns: int
    incident: int  # index into :attr:`Tracked.incidents`
    kept: bool


@dataclass(slots=True)
class Tracked:
    """What one epoch changed: incidents to upsert (new ones have ``id=None``), drops, flags."""

    incidents: list[Incident] = field(default_factory=list)
    dropped: list[Incident] = field(default_factory=list)
    flags: list[FlagRow] = field(default_factory=list)


def _window_of(windows: Mapping[tuple[str, str], dict[str, Any]], gw: str, s: str) -> WindowStats:
    w = windows.get((gw, s), {})
    return WindowStats(
        start_ns=int(w.get("start_ns", 0)),
        count=int(w.get("count", 0)),
        mean=w.get("mean"),
        std=w.get("std"),
        min=w.get("min"),
        max=w.get("max"),
    )


def track(
    rows: Decoded,
    through_ns: int,
    live: Mapping[Key, Incident],
    rules: Rules,
    *,
    max_flags: int,
) -> Tracked:
    """Apply the epoch's flags (in time order), then its progress ``through_ns``.

    A flag that comes ``quiet_s`` after the previous one of its key first
    closes (or drops) the earlier incident, then starts a new one.
    """
    out = Tracked()
    index: dict[Key, int] = {}
    for live_key, inc in live.items():
        index[live_key] = len(out.incidents)
        # m of n: a pending incident's flag positions count from this epoch's end
        out.incidents.append(shift_positions(inc, rows.evaluated.get(live_key, 0)))
    windows = {(w["gateway"], w["sensor"]): w for w in rows.windows}
    per_window: Counter[Key] = Counter()
    for a in sorted(rows.alerts, key=lambda a: (int(a["ts_ns"]), a["gateway"], a["sensor"])):
        key: Key = (str(a["gateway"]), str(a["sensor"]), str(a["detector"]))
        ts, rule = int(a["ts_ns"]), rules.of(key[2])
        per_window[key] += 1
        before = out.incidents[index[key]] if key in index else None
        if before is not None:
            quiet = on_progress(before, ts, rule)
            if quiet is None:
                out.dropped.append(before)
                before = None
            elif quiet is not before:
                out.incidents[index[key]] = quiet  # closed: stays in the list, a new one follows
                before = None
        inc = on_flag(
            before,
            key=key,
            ts_ns=ts,
            window=_window_of(windows, key[0], key[1]),
            window_flags=per_window[key],
            rule=rule,
            pos=int(a.get("index", 0)) - rows.evaluated.get(key, 0),
        )
        if before is None:
            index[key] = len(out.incidents)
            out.incidents.append(inc)
        else:
            out.incidents[index[key]] = inc
        out.flags.append(FlagRow(*key, ts, index[key], inc.flags <= max_flags))
    for key, i in index.items():
        after = on_progress(out.incidents[i], through_ns, rules.of(key[2]))
        if after is None:
            out.dropped.append(out.incidents[i])
        else:
            out.incidents[i] = after
    dropped = {id(d) for d in out.dropped}
    remap: dict[int, int] = {}
    kept: list[Incident] = []
    for i, inc in enumerate(out.incidents):
        if id(inc) not in dropped:
            remap[i] = len(kept)
            kept.append(inc)
    out.flags = [
        FlagRow(f.gateway, f.sensor, f.detector, f.ts_ns, remap.get(f.incident, -1), f.kept)
        for f in out.flags
    ]
    out.incidents = kept
    return out
