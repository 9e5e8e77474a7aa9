"""Chaos soak of the highly available JetStream layout (``python -m bench.soak --ha``).

Per party (trust domain): K = 2 shard workers plus one standby of each shard
(every worker of a shard contends for its lease), a 3-node JetStream cluster
with R=3 streams and buckets, two ingest frontends the gateways list as the
cluster's ``urls:``, ``jetstream.lease_ttl_s`` 2; a dealer per shard and a
standby dealer of each (``dealer2[-s<k>]``, docs/CLOUD.md "Dealer standby"), the
output service, the simulator, two gateways and the broker as in
:mod:`bench.soak`.

Every ``INTERVAL_S`` (20 s; ``QUICK_INTERVAL_S`` with ``--quick``) one process
of a random party is SIGKILLed, drawn from ``random.Random(seed)``: the
shard's lease holder (resolved when the kill is due, from the workers'
``/healthz``), a standby, a frontend, a JetStream node or the dealer the shard
uses (party 0's ``/healthz`` ``dealer.in_use``); the
supervisor restarts it after ``RESTART_DELAY_S`` (a restarted worker comes
back under a new worker id and is a standby if its lease was taken). One
kill at a time; between them, as in the plain soak, a gateway and the broker
are SIGKILLed too. Scoring is :mod:`bench.soak_score`'s, per shard.

Figures (JSON, last line): ``stream_windows`` (streams × windows scored),
``on_time_fraction`` (stream windows whose shard's epoch was stored within
10 s of the window's end), ``readings_lost`` / ``readings_duplicated``,
``takeover_s_p99`` (SIGKILL of a lease holder → the first epoch committed by
its successor, polled from the successor's
``tecc_shard_takeover_commit_seconds_count``), ``kills`` by kind, and
``late_stream_windows_by_kind`` (each late window blamed on the last kill
before its deadline).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from bench.e2e import SCENARIO, load_ranges
from bench.soak import Event, soak
from bench.soak_score import DEADLINE_S, Observed, shard_delays
from cloud_tecc.analytics.policy import policy_from_mapping
from cloud_tecc.party.shardmap import ShardMap
from demo.devstack.deployment import Deployment
from demo.pipeline import HaLayout, Pipeline

SHARDS = 2
LAYOUT = HaLayout(standbys=1, nats_nodes=3, frontends=2, lease_ttl_s=2)
#: A standby dealer per shard: a dealer kill (of the one in use) moves the shard to it.
DEALER_STANDBYS = 1
INTERVAL_S = 20.0
QUICK_INTERVAL_S = 10.0
QUICK_S = 75.0  # simulated seconds of --quick: 7 kills of the HA kinds
FIRST_S = 8.0
RESTART_DELAY_S = 1.0
#: One round of kinds (shuffled per round): the lease holder twice, takeover is the point.
ROUND = ("worker_active", "worker_active", "worker_standby", "frontend", "nats", "dealer")


@dataclass(frozen=True, slots=True)
class HaEvent:
    """A kill of one process of the HA layout at ``at`` simulated seconds."""

    at: float
    kind: str  # one of ROUND's kinds
    party: int
    shard: int
    pick: float  # which of several candidates, in [0, 1)


def schedule(seed: int, run_s: float, *, quick: bool) -> tuple[list[HaEvent], list[Event]]:
    """The HA kills (one per interval) and the gateway and broker kills between them."""
    rng = random.Random(seed)
    step = QUICK_INTERVAL_S if quick else INTERVAL_S
    slots = [FIRST_S + j * step for j in range(int((run_s - FIRST_S - 6.0) // step) + 1)]
    kinds: list[str] = []
    while len(kinds) < len(slots):
        block = list(ROUND)
        rng.shuffle(block)
        kinds += block
    ha = [
        HaEvent(t, kind, rng.randrange(2), rng.randrange(SHARDS), rng.random())
        for t, kind in zip(slots, kinds, strict=False)
    ]
    n = 1 if quick else max(1, round(run_s / 300))
    targets = [rng.choice(("gw1", "gw2")) for _ in range(n)] + ["mosquitto"] * n
    halves = rng.sample(range(len(slots) - 1), min(len(targets), len(slots) - 1))
    others = [
        Event(round(slots[j] + step / 2, 2), target, "kill")
        for j, target in zip(sorted(halves), targets, strict=False)
    ]
    return ha, others


@dataclass(slots=True)
class HaObserved:
    """The HA kills as done: (wall time, kind, process), and the takeovers measured."""

    kills: list[tuple[float, str, str]]
    takeovers: list[tuple[str, float | None]]  # (killed owner, kill → successor's first commit)


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[dict[str, Any] | None, str]:
    """``/healthz`` JSON and ``/metrics`` text of one service (None, "" if unreachable)."""
    try:
        async with s.get(f"{url}/healthz", ssl=False) as r:
            health = await r.json()
        async with s.get(f"{url}/metrics", ssl=False) as r:
            return health, await r.text()
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None, ""


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


COMMITS = "tecc_shard_takeover_commit_seconds_count"


async def _roles(
    s: aiohttp.ClientSession, dep: Deployment, party: int, shard: int
) -> dict[str, tuple[str, float]]:
    """Worker → (its role, its takeover-commit count) for one party's shard."""
    out: dict[str, tuple[str, float]] = {}
    for w in dep.replicas(party, shard):
        health, text = await _get(s, dep.url(w))
        if health is not None:
            out[w] = (str(health.get("role", "")), _metric(text, COMMITS))
    return out


async def _successor_commit(
    dep: Deployment, party: int, shard: int, killed: str, before: dict[str, float], t_kill: float
) -> float | None:
    """Seconds from ``t_kill`` until another worker of the shard committed its first epoch."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
        while time.time() - t_kill < 60.0:
            for w in dep.replicas(party, shard):
                _, text = await _get(s, dep.url(w))
                base = 0.0 if w == killed else before.get(w, 0.0)  # a restarted one starts at 0
                if text and _metric(text, COMMITS) > base:
                    return round(time.time() - t_kill, 2)
            await asyncio.sleep(0.1)
    return None


async def _dealer_in_use(s: aiohttp.ClientSession, dep: Deployment, ev: HaEvent) -> str:
    """The dealer process the shard's session uses now (party 0's owner says; else any)."""
    tail = "" if ev.shard == 0 else f"-s{ev.shard}"
    for w in dep.replicas(0, ev.shard):
        health, _ = await _get(s, dep.url(w))
        in_use = ((health or {}).get("dealer") or {}).get("in_use")
        if in_use and f"{in_use}{tail}" in dep.dealers_of(ev.shard):
            return f"{in_use}{tail}"
    listed = dep.dealers_of(ev.shard)
    return listed[int(ev.pick * len(listed))]


async def _victim(
    s: aiohttp.ClientSession, p: Pipeline, dep: Deployment, ev: HaEvent
) -> tuple[str, str, dict[str, float]]:
    """(kind, process name, takeover counts of the shard's workers) for ``ev``, resolved now."""
    party = dep.parties[ev.party]
    if ev.kind == "frontend":
        fes = sorted(f for f, owner in dep.frontends.items() if owner == party)
        return ev.kind, fes[int(ev.pick * len(fes))], {}
    if ev.kind == "nats":
        nodes = sorted(n for n in p.supervisor.children if n.startswith(f"{party}-nats"))
        return ev.kind, nodes[int(ev.pick * len(nodes))], {}
    if ev.kind == "dealer":
        return ev.kind, await _dealer_in_use(s, dep, ev), {}
    roles: dict[str, tuple[str, float]] = {}
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:  # a shard in the middle of a takeover: wait for it
        roles = await _roles(s, dep, ev.party, ev.shard)
        if any(r == "owner" for r, _ in roles.values()):
            break
        await asyncio.sleep(0.2)
    counts = {w: c for w, (_, c) in roles.items()}
    owners = sorted(w for w, (r, _) in roles.items() if r == "owner")
    standbys = sorted(w for w, (r, _) in roles.items() if r == "standby")
    if ev.kind == "worker_active" and owners:
        return ev.kind, owners[0], counts
    pool = standbys or sorted(dep.replicas(ev.party, ev.shard))
    return "worker_standby", pool[int(ev.pick * len(pool))], counts


async def _chaos(
    p: Pipeline,
    ha: list[HaEvent],
    others: list[Event],
    t_start: float,
    obs: Observed,
    seen: HaObserved,
) -> None:
    """Play both schedules (times relative to ``t_start``, wall clock); wait for takeovers."""
    dep = p.deployment
    assert dep is not None
    timeline: list[tuple[float, HaEvent | Event]] = [(e.at, e) for e in ha]
    timeline += [(e.at, e) for e in others]
    takeovers: list[tuple[str, asyncio.Task[float | None]]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
        for at, ev in sorted(timeline, key=lambda x: x[0]):
            await asyncio.sleep(max(0.0, t_start + at - time.time()))
            counts: dict[str, float] = {}
            if isinstance(ev, Event):
                kind, name = ("broker" if ev.target == "mosquitto" else "gateway"), ev.target
            else:
                kind, name, counts = await _victim(s, p, dep, ev)
            t = time.time()
            p.supervisor.kill(name, signal.SIGKILL, hold_s=RESTART_DELAY_S)
            obs.kills.append((t, name, "kill"))
            seen.kills.append((t, kind, name))
            if kind == "worker_active" and isinstance(ev, HaEvent):
                poll = _successor_commit(dep, ev.party, ev.shard, name, counts, t)
                takeovers.append((name, asyncio.create_task(poll)))
    for name, task in takeovers:
        seen.takeovers.append((name, await task))


BLAME_S = 30.0  # a kill longer ago than this before a window's end is not its cause


def _blame(
    delays: dict[tuple[int, int], float | None],
    streams: Counter[int],
    kills: list[tuple[float, str, str]],
    ws: float,
    offset: float,
) -> tuple[dict[str, int], dict[str, float], list[list[Any]]]:
    """Per kind of kill: late stream windows, and the slowest release after such a kill.

    A window is blamed on the last kill before it was stored (before its
    deadline if it was late or never released) and at most ``BLAME_S``
    before its end; ``none`` if there is no such kill. Also the late epochs
    as [shard, window, delay s, kind, process, seconds from kill to window end].
    """
    late: Counter[str] = Counter()
    worst: dict[str, float] = {}
    listed: list[list[Any]] = []
    for (sh, k), d in sorted(delays.items(), key=lambda x: x[0][1]):
        end = (k + 1) * ws + offset
        cut = end + (DEADLINE_S if d is None else min(d, DEADLINE_S))
        before = [(t, kind, name) for t, kind, name in kills if end - BLAME_S <= t <= cut]
        last = max(before) if before else (end, "none", "")
        if d is not None:
            worst[last[1]] = round(max(worst.get(last[1], 0.0), d), 2)
        if d is not None and d <= DEADLINE_S:
            continue
        late[last[1]] += streams[sh]
        if len(listed) < 30:
            listed.append([sh, k, None if d is None else round(d, 2), last[1], last[2],
                           round(end - last[0], 2)])  # fmt: skip
    return dict(late), worst, listed


async def run(
    run_s: float,
    state: Path,
    seed: int,
    *,
    quick: bool,
    plan: tuple[list[HaEvent], list[Event]] | None = None,
) -> dict[str, Any]:
    """Soak the HA layout for ``run_s`` simulated seconds under single-process kills.

    ``plan``: these kills instead of :func:`schedule`'s (a test's fixed choice).
    """
    load_ranges()
    ha, others = plan if plan is not None else schedule(seed, run_s, quick=quick)
    p = Pipeline(
        state,
        fresh=True,
        sim_duration=run_s,
        sim_scenario=SCENARIO,
        workers=SHARDS,
        ha=LAYOUT,
        dealer_standbys=DEALER_STANDBYS,
    )
    obs, seen = Observed(), HaObserved([], [])
    async with p:
        dep = p.deployment
        assert dep is not None
        workers = [dep.url(w) for w in dep.workers]
        done = await soak(
            p,
            run_s,
            lambda t: _chaos(p, ha, others, t, obs, seen),
            obs,
            quick=quick,
            shards=SHARDS,
            workers=workers,
        )
    policy = policy_from_mapping(yaml.safe_load(p.policy_path.read_text()))
    shard_of = ShardMap.for_policy(SHARDS, policy).shard_of
    streams = Counter(shard_of(g, s.sensor) for g, ss in p.sensors.items() for s in ss)
    delays = shard_delays(done.ctx, done.epochs, SHARDS)
    n_windows = len({k for _, k in delays})
    on_time = sum(streams[sh] for (sh, _), d in delays.items() if d is not None and d <= DEADLINE_S)
    stream_windows = sum(streams.values()) * n_windows
    late_by_kind, worst, late = _blame(delays, streams, seen.kills, done.ctx.ws, done.ctx.offset)
    took = [t for _, t in seen.takeovers if t is not None]
    known = [d for d in delays.values() if d is not None]
    t0 = p.sim_start_used or 0.0
    return {
        **done.result,
        "seed": seed,
        "kills": dict(Counter(kind for _, kind, _ in seen.kills)),
        "layout": {
            "shards": SHARDS,
            "standbys": LAYOUT.standbys,
            "nats_nodes": LAYOUT.nats_nodes,
            "frontends": LAYOUT.frontends,
            "streams_per_shard": {str(k): v for k, v in sorted(streams.items())},
        },
        "interval_s": QUICK_INTERVAL_S if quick else INTERVAL_S,
        "kills_done": [
            [round(t - done.ctx.offset - t0, 2), kind, name] for t, kind, name in seen.kills
        ],
        "stream_windows": stream_windows,
        "on_time_fraction": round(on_time / max(1, stream_windows), 5),
        "release_delay_s_p99": round(float(np.percentile(known, 99)), 2) if known else None,
        "release_delay_s_max": round(max(known), 2) if known else None,
        "late_stream_windows_by_kind": late_by_kind,
        "release_delay_s_max_by_kind": worst,  # the slowest release after each kind of kill
        "late_epochs": late,  # [shard, window, delay s, blamed kind, process, kill → window end]
        "takeover_s_p99": round(float(np.percentile(took, 99)), 2) if took else None,
        "takeover_s": seen.takeovers,
        "schedule": [[e.at, e.kind, e.party, e.shard] for e in ha]
        + [[e.at, e.target, "kill"] for e in others],
    }
