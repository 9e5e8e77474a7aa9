"""The read API of released rows and incidents: time ranges, pages, downsampling.

Every list takes ``since`` and ``until`` (Unix seconds) and ``limit``
(capped at :data:`MAX_LIMIT`) with ``offset``; a full page carries the next
offset in the ``X-Next-Offset`` header. ``/api/v1/windows?points=N`` merges
each series into at most N buckets (count-weighted mean, pooled population
std, min of minima, max of maxima): a 24 h chart costs N rows, not 8,640.
Merging released windows releases nothing new.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web

from cloud_tecc.output.incident_rows import IncidentQuery
from cloud_tecc.output.incidents import IncidentError, State
from cloud_tecc.output.store import ResultStore

MAX_LIMIT: Final = 10_000
MAX_POINTS: Final = 2_000
_MAX_S: Final = 9.2e9
_END: Final = 2**63 - 1


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def seconds_ns(request: web.Request, name: str, default: int) -> int:
    """Query parameter ``name`` in Unix seconds → ns; 400 for NaN, ±inf, out of range."""
    raw = request.query.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not abs(value) < _MAX_S:
        raise _bad(f"{name} must be Unix seconds (a number)")
    return int(value * 1e9)


def integer(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """Bounded integer query parameter; 400 names the bounds."""
    raw = request.query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise _bad(f"{name} must be an integer in {low}..{high}")
    return int(raw)


def _page(rows: list[dict[str, Any]], limit: int, offset: int) -> web.Response:
    headers = {"X-Next-Offset": str(offset + limit)} if len(rows) == limit else {}
    return web.json_response(rows, headers=headers)


def downsample(rows: list[dict[str, Any]], points: int) -> list[dict[str, Any]]:
    """Merge each (gateway, sensor) series of window rows into at most ``points`` buckets."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["gateway"], r["sensor"]), []).append(r)
    out: list[dict[str, Any]] = []
    for group in series.values():
        if len(group) <= points:
            out += group
            continue
        t0 = group[0]["start_ns"]
        span = group[-1]["start_ns"] + group[-1]["window_ns"] - t0
        buckets: dict[int, list[dict[str, Any]]] = {}
        for r in group:
            buckets.setdefault(min(points - 1, (r["start_ns"] - t0) * points // span), []).append(r)
        out += [_merge(b) for _, b in sorted(buckets.items())]
    return sorted(out, key=lambda r: (r["start_ns"], r["gateway"], r["sensor"]))


def _merge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = rows[0], rows[-1]
    n = sum(int(r["count"]) for r in rows)
    with_mean = [r for r in rows if r.get("mean") is not None]
    m = sum(r["count"] * r["mean"] for r in with_mean)
    nm = sum(r["count"] for r in with_mean)
    mean = m / nm if nm else None
    std = None
    with_std = [r for r in with_mean if r.get("std") is not None]
    if mean is not None and with_std and len(with_std) == len(with_mean):
        second = sum(r["count"] * (r["std"] ** 2 + r["mean"] ** 2) for r in with_std) / nm
        std = math.sqrt(max(second - mean * mean, 0.0))
    lows = [r["min"] for r in rows if r.get("min") is not None]
    highs = [r["max"] for r in rows if r.get("max") is not None]
    devs = [r["deviates_from_fleet"] for r in rows if r.get("deviates_from_fleet") is not None]
    return {
        "gateway": first["gateway"],
        "sensor": first["sensor"],
        "start_ns": first["start_ns"],
        "window_ns": last["start_ns"] + last["window_ns"] - first["start_ns"],
        "count": n,
        "mean": mean,
        "std": std,
        "min": min(lows) if lows else None,
        "max": max(highs) if highs else None,
        "deviates_from_fleet": any(devs) if devs else None,
        "windows_merged": len(rows),
    }


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def _incident_id(r: web.Request) -> int:
    raw = r.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise web.HTTPNotFound
    return int(raw)


class ReadApi:
    """The read and incident routes (access rules are in ``auth.RULES``)."""

    def __init__(
        self,
        store: ResultStore,
        changed: Callable[[], Awaitable[None]],
        units: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.changed = changed
        self.units = dict(units or {})

    def unit(self, sensor: str) -> str:
        """The configured unit of ``sensor`` (exact name first, then glob patterns)."""
        if sensor in self.units:
            return self.units[sensor]
        return next((u for pat, u in self.units.items() if fnmatch.fnmatchcase(sensor, pat)), "")

    async def sensors(self, _r: web.Request) -> web.Response:
        rows = await _run(self.store.sensors)
        for row in rows:
            row["unit"] = self.unit(row["sensor"])
        return web.json_response(rows)

    async def windows(self, r: web.Request) -> web.Response:
        limit = integer(r, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        since, until = seconds_ns(r, "since", 0), seconds_ns(r, "until", _END)
        rows = await _run(
            self.store.windows, r.query.get("sensor"), r.query.get("gateway"), since, until, limit
        )
        for row in rows:
            row["deviates_from_fleet"] = None if row["deviates"] is None else bool(row["deviates"])
            del row["deviates"]
        points = integer(r, "points", 0, 1, MAX_POINTS)
        if points:
            return web.json_response(downsample(rows, points))
        return _page(rows, limit, 0)

    async def alerts(self, r: web.Request) -> web.Response:
        limit = integer(r, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        offset = integer(r, "offset", 0, 0, 10**9)
        rows = await _run(
            self.store.alerts,
            seconds_ns(r, "since", 0),
            seconds_ns(r, "until", _END),
            r.query.get("detector"),
            limit,
            offset,
        )
        return _page(rows, limit, offset)

    async def fleet(self, r: web.Request) -> web.Response:
        limit = integer(r, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        rows = await _run(
            self.store.fleet,
            r.query.get("class"),
            seconds_ns(r, "since", 0),
            seconds_ns(r, "until", _END),
            limit,
        )
        return _page(rows, limit, 0)

    async def epochs(self, r: web.Request) -> web.Response:
        limit = integer(r, "limit", MAX_LIMIT * 10, 1, MAX_LIMIT * 10)
        return _page(await _run(self.store.epochs, limit), limit, 0)

    async def incidents(self, r: web.Request) -> web.Response:
        raw_state = r.query.get("state") or None
        if raw_state is not None and raw_state not in ("open", "acknowledged", "closed"):
            raise _bad("state must be open, acknowledged or closed")
        q = IncidentQuery(
            gateway=r.query.get("gateway") or None,
            sensor=r.query.get("sensor") or None,
            detector=r.query.get("detector") or None,
            state=None if raw_state is None else State(raw_state),
            since_ns=seconds_ns(r, "since", 0),
            until_ns=seconds_ns(r, "until", _END),
            limit=integer(r, "limit", 100, 1, 1000),
            offset=integer(r, "offset", 0, 0, 10**9),
        )
        return _page(await _run(self.store.incidents, q), q.limit, q.offset)

    async def summary(self, _r: web.Request) -> web.Response:
        return web.json_response(await _run(self.store.summary))

    async def flags(self, r: web.Request) -> web.Response:
        limit = integer(r, "limit", 1000, 1, MAX_LIMIT)
        return _page(await _run(self.store.incident_flags, _incident_id(r), limit), limit, 0)

    async def acknowledge(self, r: web.Request) -> web.Response:
        who = r["principal"]
        try:
            row = await _run(self.store.acknowledge, _incident_id(r), who.subject, time.time_ns())
        except IncidentError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        if row is None:
            return web.json_response({"error": "no such incident"}, status=404)
        await self.changed()
        return web.json_response(row)

    def attach(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        app.router.add_get("/api/v1/sensors", self.sensors)
        app.router.add_get("/api/v1/windows", self.windows)
        app.router.add_get("/api/v1/alerts", self.alerts)
        app.router.add_get("/api/v1/fleet", self.fleet)
        app.router.add_get("/api/v1/epochs", self.epochs)
        app.router.add_get("/api/v1/incidents", self.incidents)
        app.router.add_get("/api/v1/summary", self.summary)
        app.router.add_get("/api/v1/incidents/{id}/flags", self.flags)
        app.router.add_post("/api/v1/incidents/{id}/acknowledge", self.acknowledge)
