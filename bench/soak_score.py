"""Scoring of the chaos soaks (``bench.soak`` and ``bench.soak --ha``) against the simulator.

Per (sensor, window) the readings the simulator published (recomputed
offline) and those the output service counted are compared; a reading class
is *excluded* (counted and reported apart, never hidden) when the system
cannot promise it (:data:`EXCLUDED_WHY`). Timeliness is read from the output
service's epoch store times: a window of a shard is on time when its epoch
was stored within :data:`DEADLINE_S` of the window's end (wall clock).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.e2e import RANGES, _data_changes, _ns, _valid
from demo.layout import SimSensor
from firmware_sim.sample import Sample

DEADLINE_S = 10.0
AUTOSAVE_MARGIN_S = 3.0
RECONNECT_MARGIN_S = 5.0
OPCUA_MARGIN_S = 1.0
EXCLUDED_WHY = {
    "plain_payload": "no timestamp: windows by gateway receive time, not matchable per slot",
    "qos0": "QoS 0 is at most once: a broker or gateway kill may drop it by contract",
    "mqtt_broker_kill_interval": (
        f"broker SIGKILL: QoS 1 messages acknowledged in the last autosave interval "
        f"(1 s; margin {AUTOSAVE_MARGIN_S} s) are not on disk, and the simulator drops "
        f"publishes while the broker is down (margin {RECONNECT_MARGIN_S} s after restart); "
        "messages it restores and delivers later than the gateways' progress.slack_s after "
        "their timestamp arrive late"
    ),
    "opcua_gateway_not_subscribed": (
        "OPC-UA data changes while the gateway is not subscribed are seen by no one "
        f"(a subscription keeps no history; margin {OPCUA_MARGIN_S} s)"
    ),
}


@dataclass(slots=True)
class Observed:
    """What the harness saw during the run (wall clock)."""

    kills: list[tuple[float, str, str]] = field(default_factory=list)  # (t, target, action)
    not_subscribed: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    max_spool: int = 0


def _intervals(points: list[float], gap: float = 1.0) -> list[tuple[float, float]]:
    """Merge sample times closer than ``gap`` into intervals."""
    out: list[tuple[float, float]] = []
    for t in sorted(points):
        if out and t - out[-1][1] <= gap:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


Iv = list[tuple[float, float]]


def _overlaps(a0: float, a1: float, iv: Iv) -> bool:
    return any(a0 < b1 and b0 < a1 for b0, b1 in iv)


@dataclass(frozen=True, slots=True)
class _Ctx:
    """The scored interval [t0, t_end) in simulated time and the clocks' relation."""

    start: float
    t0: float
    t_end: float
    ws: float
    wn: int
    offset: float  # wall clock minus simulated time
    starts: dict[str, list[float]]  # child → its start times (wall)

    def up_after(self, name: str, t: float) -> float | None:
        """The first start of child ``name`` after wall time ``t``."""
        return min((s for s in self.starts.get(name, []) if s > t), default=None)


def _class_of(spec: SimSensor, a: float, ws: float, broker: Iv, opcua: Iv) -> str:
    if spec.payload == "plain":
        return "plain_payload"
    if spec.transport == "mqtt" and spec.qos == 0:
        return "qos0"
    if spec.transport == "mqtt" and _overlaps(a, a + ws, broker):
        return "mqtt_broker_kill_interval"
    if spec.transport == "opcua" and _overlaps(a, a + ws, opcua):
        return "opcua_gateway_not_subscribed"
    return "counted"


def _classify(
    ctx: _Ctx,
    sensors: Mapping[str, list[SimSensor]],
    obs: Observed,
    samples: Mapping[str, list[Sample]],
    windows: list[dict[str, Any]],
) -> dict[str, dict[str, int]]:
    """Published vs counted readings per reading class (see the module docstring)."""
    off = ctx.offset
    broker: Iv = []
    for t, target, _ in obs.kills:
        if target == "mosquitto":
            up = ctx.up_after("mosquitto", t) or t + 60.0
            broker.append((t - off - AUTOSAVE_MARGIN_S, up - off + RECONNECT_MARGIN_S))
    opcua_down = {
        g: [
            (a - off - OPCUA_MARGIN_S, b - off + OPCUA_MARGIN_S)
            for a, b in _intervals(obs.not_subscribed.get(g, []))
        ]
        for g in sensors
    }
    counted_by = {(w["sensor"], int(w["start_ns"])): int(w["count"]) for w in windows}
    classes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for gw, specs in sensors.items():
        for spec in specs:
            sid = spec.sensor
            seen = samples[sid]
            seen = _data_changes(seen) if spec.transport == "opcua" else seen
            published: dict[int, int] = defaultdict(int)
            for smp in seen:
                if _valid(smp, *RANGES[sid]) and ctx.t0 <= smp.ts < ctx.t_end:
                    published[_ns(smp.ts) // ctx.wn * ctx.wn] += 1
            keys = set(published) | {k[1] for k in counted_by if k[0] == sid}
            for w0 in sorted(keys):
                a = w0 / 1e9
                if not ctx.t0 <= a < ctx.t_end:
                    continue
                cls = _class_of(spec, a, ctx.ws, broker, opcua_down[gw])
                pub, cnt = published.get(w0, 0), counted_by.get((sid, w0), 0)
                c = classes[cls]
                c["published"] += pub
                c["counted"] += cnt
                c["lost"] += max(0, pub - cnt)
                c["duplicated"] += max(0, cnt - pub)
                if cls == "counted" and pub != cnt and len(c) < 12:
                    c[f"{sid}@+{a - ctx.start:.0f}s"] = cnt - pub
    return classes


def shard_delays(
    ctx: _Ctx, epochs: list[dict[str, Any]], shards: int = 1
) -> dict[tuple[int, int], float | None]:
    """(shard, window index) → seconds from the window's end to its epoch's store (None: never).

    Over the windows of the scored interval, each of ``shards`` shards (an
    epoch without ``shard`` is shard 0's).
    """
    stored = {
        (int(e.get("shard") or 0), int(e["start_ns"])): int(e["stored_ns"]) / 1e9 for e in epochs
    }
    ws, off = ctx.ws, ctx.offset
    out: dict[tuple[int, int], float | None] = {}
    for k in range(math.ceil(ctx.t0 / ws), math.floor(ctx.t_end / ws)):
        for sh in range(shards):
            st = stored.get((sh, _ns(k * ws)))
            out[(sh, k)] = None if st is None else st - (k * ws + ws + off)
    return out


def _timeliness(
    ctx: _Ctx, obs: Observed, epochs: list[dict[str, Any]], shards: int = 1
) -> tuple[float, int, int, list[tuple[str, float]]]:
    """Availability, windows scored, windows released and recovery times (epoch store times).

    ``windows scored`` is the number of windows in the scored interval;
    ``windows released`` how many of them the output service stored at all
    (every shard's epoch), on time when every shard's was within the deadline.
    """
    delays = shard_delays(ctx, epochs, shards)
    windows = sorted({k for _, k in delays})
    on_time = released = 0
    for k in windows:
        ds = [delays[(sh, k)] for sh in range(shards)]
        released += all(d is not None for d in ds)
        on_time += all(d is not None and d <= DEADLINE_S for d in ds)
    stored = [int(e["stored_ns"]) / 1e9 for e in epochs]
    starts = [int(e["start_ns"]) / 1e9 for e in epochs]
    recovery: list[tuple[str, float]] = []
    for t, target, action in obs.kills:
        up = ctx.up_after(target, t)
        if action == "freeze" or up is None:
            continue
        first = [st for s0, st in zip(starts, stored, strict=True) if s0 + ctx.offset >= up]
        if first:
            recovery.append((target, round(min(first) - up, 2)))
    return round(on_time / max(1, len(windows)), 4), len(windows), released, recovery
