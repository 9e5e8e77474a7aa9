"""Chaos soak: the whole pipeline under seeded kills, scored against the simulator.

``python -m bench.soak [--minutes M] [--quick] [--seed S]`` runs
:class:`demo.pipeline.Pipeline` (fresh temporary state dir, simulator at its
steady 10 Hz per sensor for the whole run) while a schedule drawn from
``random.Random(seed)`` SIGKILLs the gateways, both cluster parties, the
dealer, the output service and the MQTT broker (the supervisor restarts them
with its backoff). One cluster-party kill is held down (60 s; 8 s with
``--quick``) and one party is frozen with SIGSTOP then SIGCONT (a network-cut
stand-in). Then the chaos stops, the gateways' spools drain and the last
windows are released; the figures are printed as one JSON object last.

Counting reuses :mod:`bench.e2e` (offline recomputation of what the simulator
published, windows of the output API). Per (sensor, window) the published and
counted readings are compared; a reading class is *excluded* (counted and
reported apart, never hidden) when the system cannot promise it:

- ``plain`` payloads (no timestamp, windows by receive time) and QoS 0
  sensors (at most once by definition);
- MQTT readings in a broker-kill interval: from ``AUTOSAVE_MARGIN_S`` before
  the SIGKILL (mosquitto persists sessions every ``autosave_interval 1`` s: a
  QoS 1 message it acknowledged to the simulator but had not yet saved is
  gone with the process) to ``RECONNECT_MARGIN_S`` after the restarted
  broker listens (the simulator's publishes while it is down fail and are
  dropped at the source, as with a real sensor; it reconnects every 0.5 s);
- OPC-UA readings of a gateway while it is not subscribed (killed or
  restarting, seen on its /healthz): a subscription keeps no history, data
  changes without a subscriber are never visible to anyone.

``availability`` = the share of windows of the scored interval whose results
were stored by the output service within ``DEADLINE_S`` of the window's end
(wall clock; never released counts as unavailable). ``recovery_s_p99`` =
over restarts of a killed cloud or gateway process, the time from the
process start to the storing of the first window that began after it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import signal
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from bench._report import emit
from bench.e2e import (
    RANGES,
    SCENARIO,
    _clock_offset,
    _data_changes,
    _ns,
    _released_until,
    _valid,
    _windows,
    _with_scenario,
    load_ranges,
)
from cloud_tecc.analytics.policy import policy_from_mapping
from demo.devstack.deployment import auth_headers
from demo.layout import SimSensor
from demo.pipeline import Pipeline
from firmware_sim.line import simulate
from firmware_sim.sample import Sample

TARGETS = ("gw1", "gw2", "party0", "party1", "dealer", "output", "mosquitto")
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


@dataclass(frozen=True, slots=True)
class Event:
    """One chaos action at ``at`` seconds after the simulator started."""

    at: float
    target: str
    action: str  # "kill" | "hold" | "freeze"
    hold_s: float = 0.0


def schedule(seed: int, run_s: float, *, quick: bool) -> list[Event]:
    """A deterministic chaos schedule for a run of ``run_s`` simulated seconds."""
    rng = random.Random(seed)
    lo, hi = (4.0, run_s - 12.0) if quick else (15.0, run_s - 45.0)
    hold = 8.0 if quick else 60.0
    freeze = 4.0 if quick else 20.0
    if quick:
        kills = ["gw1" if rng.random() < 0.5 else "gw2", "mosquitto", rng.choice(TARGETS[4:6])]
    else:
        n = max(len(TARGETS), round(run_s / 600 * 22))
        kills = list(TARGETS) + [rng.choice(TARGETS) for _ in range(n - len(TARGETS))]
        rng.shuffle(kills)
    party = rng.choice(("party0", "party1"))
    other = "party1" if party == "party0" else "party0"
    # held kill and freeze get their own slots so they do not overlap each other
    times = sorted(rng.uniform(lo, hi) for _ in kills)
    events = [Event(round(t, 2), k, "kill") for t, k in zip(times, kills, strict=True)]
    t_hold = rng.uniform(lo, max(lo, hi - hold))
    events.append(Event(round(t_hold, 2), party, "hold", hold))
    t_freeze = rng.uniform(lo, max(lo, hi - freeze))
    events.append(Event(round(t_freeze, 2), other, "freeze", freeze))
    return sorted(events, key=lambda e: e.at)


@dataclass(slots=True)
class Observed:
    """What the harness saw during the run (wall clock)."""

    kills: list[tuple[float, str, str]] = field(default_factory=list)  # (t, target, action)
    not_subscribed: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    max_spool: int = 0


async def _freeze(p: Pipeline, name: str, seconds: float) -> None:
    p.supervisor.signal(name, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        p.supervisor.signal(name, signal.SIGCONT)


async def _chaos(p: Pipeline, events: list[Event], t_start: float, obs: Observed) -> None:
    """Play ``events`` (times relative to ``t_start``, wall clock); returns when all are done."""
    frozen: list[asyncio.Task[None]] = []
    for ev in events:
        await asyncio.sleep(max(0.0, t_start + ev.at - time.time()))
        obs.kills.append((time.time(), ev.target, ev.action))
        if ev.action == "freeze":
            frozen.append(asyncio.create_task(_freeze(p, ev.target, ev.hold_s)))
        else:
            p.supervisor.kill(ev.target, signal.SIGKILL, hold_s=ev.hold_s)
    await asyncio.gather(*frozen)


async def _watch_gateways(p: Pipeline, obs: Observed, stop: asyncio.Event) -> None:
    """Poll every gateway's /healthz: spool depth, and when its OPC-UA is not subscribed."""
    assert p.urls is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
        while not stop.is_set():
            for gw, url in p.urls.gateways.items():
                ok = False
                try:
                    async with s.get(url) as r:
                        body = await r.json()
                    depth = sum(int(c["depth"]) for c in body["clusters"].values())
                    obs.max_spool = max(obs.max_spool, depth)
                    ok = all(v.get("subscribed", True) for v in body["sources"].values())
                except (aiohttp.ClientError, OSError, TimeoutError, KeyError, ValueError):
                    pass
                if not ok:
                    obs.not_subscribed[gw].append(time.time())
            await asyncio.sleep(0.25)


def _drained(health: dict[str, Any]) -> bool:
    """A gateway whose spool is empty for every cluster and that holds no backlog."""
    return int(health.get("backlog", 0)) == 0 and all(
        int(c["depth"]) == 0 for c in health["clusters"].values()
    )


async def _epochs(api: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession(
            headers=auth_headers(api), timeout=aiohttp.ClientTimeout(total=10)
        ) as s,
        s.get(f"{api}/epochs") as r,
    ):
        out: list[dict[str, Any]] = await r.json()
        return out


async def _counter(bases: list[str], name: str) -> list[float | None]:
    """A Prometheus counter from each service's ``/metrics`` (None if unreachable)."""
    out: list[float | None] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        for base in bases:
            value: float | None = None
            try:
                async with s.get(f"{base}/metrics", ssl=False) as r:  # loopback parties
                    for line in (await r.text()).splitlines():
                        if line.startswith(name + " "):
                            value = float(line.split()[-1])
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                pass
            out.append(value)
    return out


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


def _timeliness(
    ctx: _Ctx, obs: Observed, epochs: list[dict[str, Any]]
) -> tuple[float, int, int, list[tuple[str, float]]]:
    """Availability, windows scored, windows released and recovery times (epoch store times).

    ``windows scored`` is the number of windows in the scored interval;
    ``windows released`` how many of them the output service stored at all.
    """
    stored = {int(e["start_ns"]): int(e["stored_ns"]) / 1e9 for e in epochs}
    ws, off = ctx.ws, ctx.offset
    grid = range(math.ceil(ctx.t0 / ws), math.floor(ctx.t_end / ws))
    on_time = released = 0
    for k in grid:
        st = stored.get(_ns(k * ws))
        released += st is not None
        if st is not None and st - (k * ws + ws + off) <= DEADLINE_S:
            on_time += 1
    recovery: list[tuple[str, float]] = []
    for t, target, action in obs.kills:
        up = ctx.up_after(target, t)
        if action == "freeze" or up is None:
            continue
        first = [st for s0, st in stored.items() if s0 / 1e9 + off >= up]
        if first:
            recovery.append((target, round(min(first) - up, 2)))
    return round(on_time / max(1, len(grid)), 4), len(grid), released, recovery


async def run(run_s: float, state: Path, seed: int, *, quick: bool) -> dict[str, Any]:
    """Soak the pipeline for ``run_s`` simulated seconds under chaos and score it."""
    load_ranges()
    events = schedule(seed, run_s, quick=quick)
    p = Pipeline(state, fresh=True, sim_duration=run_s, sim_scenario=SCENARIO)
    obs = Observed()
    stop = asyncio.Event()
    t_wall = time.time()
    async with p:
        assert p.urls is not None
        assert p.sim_start_used is not None
        start = p.sim_start_used
        watcher = asyncio.create_task(_watch_gateways(p, obs, stop))
        offset = await asyncio.to_thread(_clock_offset, p.urls.mqtt_port, 1.0)
        subscribed = await p.wait_subscribed()
        await _chaos(p, events, start + offset, obs)
        sim = p.supervisor.children["sim"].process
        assert sim is not None
        await sim.wait()
        drained = await p.wait_gateways(_drained, 30.0 if quick else 120.0, poll_s=0.5)
        await _released_until(p.urls.output_api, start + run_s - 1.0, 30.0)
        stop.set()
        await watcher
        sensors = [s for ss in p.sensors.values() for s in ss]
        windows = await _windows(p.urls.output_api, [s.sensor for s in sensors], start)
        epochs = await _epochs(p.urls.output_api)
        late = await _counter(list(p.urls.parties), "tecc_ingest_late_readings_total")
        late_edge = await _counter(
            [u.removesuffix("/healthz") for u in p.urls.gateways.values()],
            "gateway_readings_late_total",
        )
        starts = {n: list(c.starts) for n, c in p.supervisor.children.items()}
        restarts = {n: c.restarts for n, c in p.supervisor.children.items() if c.restarts}
    policy = policy_from_mapping(yaml.safe_load(p.policy_path.read_text()))
    ws = float(policy.window_s)
    t0 = max(math.ceil(subscribed / ws) * ws + ws, math.ceil(subscribed - offset) + ws)
    ctx = _Ctx(start, t0, start + run_s - ws, ws, policy.window_ns, offset, starts)
    offline = await asyncio.to_thread(
        simulate, _with_scenario(p.sim_config), start=start, duration_s=run_s
    )
    classes = _classify(ctx, p.sensors, obs, offline.samples, windows)
    availability, n_windows, n_released, by_target = _timeliness(ctx, obs, epochs)
    recovery = [r for _, r in by_target]
    main = classes["counted"]
    return {
        "seed": seed,
        "sim_s": run_s,
        "kills": sum(1 for _, _, a in obs.kills if a != "freeze"),
        "freezes": sum(1 for _, _, a in obs.kills if a == "freeze"),
        "schedule": [[e.at, e.target, e.action, e.hold_s] for e in events],
        "restarts": restarts,
        "events_at_sim_s": [  # when each action happened, in seconds of simulated time
            [round(t - offset - start, 2), target, action] for t, target, action in obs.kills
        ],
        "restarted_at_sim_s": {
            n: [round(t - offset - start, 2) for t in ts[1:]]
            for n, ts in starts.items()
            if len(ts) > 1
        },
        "readings_published": main["published"],
        "readings_counted": main["counted"],
        "readings_lost": main["lost"],
        "readings_duplicated": main["duplicated"],
        "late_readings_per_party": late,  # arrived after their epoch was computed
        "late_readings_per_gateway": late_edge,  # reached the gateway after its window closed
        "max_spool_depth": obs.max_spool,
        "spools_drained": drained,
        "recovery_s_p99": round(float(np.percentile(recovery, 99)), 2) if recovery else None,
        "recovery_s_max": round(max(recovery), 2) if recovery else None,
        "recovery_s_by_restart": by_target,
        "availability": availability,
        "availability_deadline_s": DEADLINE_S,
        "windows_scored": n_windows,
        "windows_released": n_released,
        "excluded": {
            k: {**v, "why": EXCLUDED_WHY[k]} for k, v in classes.items() if k != "counted"
        },
        "counted_diffs": {k: v for k, v in main.items() if "@" in k},
        "sim_clock_offset_s": round(offset, 3),
        "wall_s": round(time.time() - t_wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print the JSON line last."""
    ap = argparse.ArgumentParser(prog="bench.soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (default 10)")
    ap.add_argument("--quick", action="store_true", help="about 30 simulated seconds, under 60 s")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    run_s = 30.0 if args.quick else args.minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="tecc-soak-") as tmp:
        result = asyncio.run(run(run_s, Path(tmp) / "state", args.seed, quick=args.quick))
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
