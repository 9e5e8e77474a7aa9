"""Chaos soak: the whole pipeline under seeded kills, scored against the simulator.

``python -m bench.soak [--minutes M] [--quick] [--seed S] [--ha]`` runs
:class:`demo.pipeline.Pipeline` (fresh temporary state dir, simulator at its
steady 10 Hz per sensor for the whole run) while a schedule drawn from
``random.Random(seed)`` SIGKILLs the gateways, both cluster parties, the
dealer, the output service and the MQTT broker (the supervisor restarts them
with its backoff). One cluster-party kill is held down (60 s; 8 s with
``--quick``) and one party is frozen with SIGSTOP then SIGCONT (a network-cut
stand-in). Then the chaos stops, the gateways' spools drain and the last
windows are released; the figures are printed as one JSON object last.

``--ha`` soaks the highly available JetStream layout instead (K = 2 shard
workers + 1 standby per party, 3-node JetStream with R=3, two ingest
frontends per party) under single-process kills: :mod:`bench.soak_ha`.

Counting (:mod:`bench.soak_score`) reuses :mod:`bench.e2e` (offline
recomputation of what the simulator published, windows of the output API).
Per (sensor, window) the published and counted readings are compared; a
reading class is *excluded* (counted and reported apart, never hidden) when
the system cannot promise it:

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from bench._report import emit
from bench.e2e import (
    SCENARIO,
    _clock_offset,
    _ns,
    _windows,
    _with_scenario,
    load_ranges,
)
from bench.soak_score import (
    DEADLINE_S,
    EXCLUDED_WHY,
    Observed,
    _classify,
    _Ctx,
    _timeliness,
)
from cloud_tecc.analytics.policy import policy_from_mapping
from demo.devstack.deployment import auth_headers
from demo.pipeline import Pipeline
from firmware_sim.line import simulate

TARGETS = ("gw1", "gw2", "party0", "party1", "dealer", "output", "mosquitto")


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


async def _released_until(api: str, until: float, shards: int, timeout_s: float) -> None:
    """Wait until the output service released every shard's epoch that starts at ``until``."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(
        headers=auth_headers(api), timeout=aiohttp.ClientTimeout(total=5)
    ) as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(f"{api}/epochs") as r:
                    epochs = await r.json()
                done = {
                    int(e.get("shard") or 0) for e in epochs if int(e["start_ns"]) >= _ns(until) - 1
                }
                if len(done) >= shards:
                    return
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.2)


@dataclass(frozen=True, slots=True)
class Soaked:
    """A finished soak: the figures both soaks report, and what they were computed from."""

    result: dict[str, Any]
    ctx: _Ctx
    epochs: list[dict[str, Any]]
    obs: Observed


#: Plays the chaos, given the wall time of the simulator's first slot; returns when done.
Chaos = Callable[[float], Awaitable[None]]


async def soak(
    p: Pipeline,
    run_s: float,
    chaos: Chaos,
    obs: Observed,
    *,
    quick: bool,
    shards: int = 1,
    workers: list[str] | None = None,
) -> Soaked:
    """Run the started pipeline ``p`` under ``chaos`` to its end, drain it and score it.

    ``workers``: base URLs of the party processes whose late-reading counters
    are reported (default: the pipeline's parties).
    """
    t_wall = time.time()
    stop = asyncio.Event()
    assert p.urls is not None
    assert p.sim_start_used is not None
    start = p.sim_start_used
    watcher = asyncio.create_task(_watch_gateways(p, obs, stop))
    offset = await asyncio.to_thread(_clock_offset, p.urls.mqtt_port, 1.0)
    subscribed = await p.wait_subscribed()
    await chaos(start + offset)
    sim = p.supervisor.children["sim"].process
    assert sim is not None
    await sim.wait()
    drained = await p.wait_gateways(_drained, 30.0 if quick else 120.0, poll_s=0.5)
    await _released_until(p.urls.output_api, start + run_s - 1.0, shards, 30.0)
    stop.set()
    await watcher
    sensors = [s for ss in p.sensors.values() for s in ss]
    windows = await _windows(p.urls.output_api, [s.sensor for s in sensors], start)
    epochs = await _epochs(p.urls.output_api)
    late = await _counter(workers or list(p.urls.parties), "tecc_ingest_late_readings_total")
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
    availability, n_windows, n_released, by_target = _timeliness(ctx, obs, epochs, shards)
    recovery = [r for _, r in by_target]
    main = classes["counted"]
    result = {
        "sim_s": run_s,
        "kills": sum(1 for _, _, a in obs.kills if a != "freeze"),
        "freezes": sum(1 for _, _, a in obs.kills if a == "freeze"),
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
    return Soaked(result, ctx, epochs, obs)


async def run(run_s: float, state: Path, seed: int, *, quick: bool) -> dict[str, Any]:
    """Soak the pipeline for ``run_s`` simulated seconds under chaos and score it."""
    load_ranges()
    events = schedule(seed, run_s, quick=quick)
    p = Pipeline(state, fresh=True, sim_duration=run_s, sim_scenario=SCENARIO)
    obs = Observed()
    async with p:
        done = await soak(p, run_s, lambda t: _chaos(p, events, t, obs), obs, quick=quick)
    schedule_doc = [[e.at, e.target, e.action, e.hold_s] for e in events]
    return {"seed": seed, **done.result, "schedule": schedule_doc}


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print the JSON line last."""
    ap = argparse.ArgumentParser(prog="bench.soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (default 10)")
    ap.add_argument(
        "--quick", action="store_true", help="about 30 simulated seconds (--ha: 75), under 2 min"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--ha", action="store_true", help="the HA JetStream layout under single-process kills"
    )
    ap.add_argument("--keep", type=Path, help="state directory to keep (logs, configs, stores)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tecc-soak-") as tmp:
        state = args.keep if args.keep is not None else Path(tmp) / "state"
        if args.ha:
            from bench import soak_ha  # noqa: PLC0415 - it imports this module

            run_s = soak_ha.QUICK_S if args.quick else args.minutes * 60.0
            result = asyncio.run(soak_ha.run(run_s, state, args.seed, quick=args.quick))
        else:
            run_s = 30.0 if args.quick else args.minutes * 60.0
            result = asyncio.run(run(run_s, state, args.seed, quick=args.quick))
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
