"""Routes for delivery status and data export (access rules in ``auth.RULES``).

* ``GET /api/v1/deliveries`` — per target: pending, delivered and dead counts
  and the newest dead letters (operator);
* ``POST /api/v1/deliveries/{target}/replay`` — re-queue a target's dead
  letters (admin);
* ``GET /api/v1/export/windows.csv`` and ``/api/v1/export/incidents.csv`` —
  released windows and incidents over ``since``/``until`` (Unix seconds) as
  CSV (viewer). CSV and not Parquet: every analysis tool reads it, and
  ``pyarrow`` would add tens of MB to every image for exports of at most
  ``MAX_LIMIT`` rows.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable, Iterable
from typing import Any, Final

from aiohttp import web

from cloud_tecc.output.api import MAX_LIMIT, integer, seconds_ns
from cloud_tecc.output.delivery import Deliverer
from cloud_tecc.output.incident_rows import IncidentQuery
from cloud_tecc.output.store import ResultStore

_END: Final = 2**63 - 1
WINDOW_COLUMNS: Final = (
    "gateway", "sensor", "start_ns", "window_ns", "count", "mean", "std", "min", "max",
    "deviates", "stored_ns",
)  # fmt: skip
INCIDENT_COLUMNS: Final = (
    "id", "gateway", "sensor", "detector", "state", "start_ns", "end_ns", "flags",
    "acknowledged_by", "acknowledged_ns",
)  # fmt: skip


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def to_csv(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """CSV text with a header row; missing values are empty cells."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


def _csv(text: str, name: str) -> web.Response:
    return web.Response(
        text=text,
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


class ExportApi:
    """Delivery status and CSV exports over one store (and its deliverer, if any)."""

    def __init__(self, store: ResultStore, deliverer: Deliverer | None) -> None:
        self.store = store
        self.deliverer = deliverer

    async def deliveries(self, _r: web.Request) -> web.Response:
        stats = {} if self.deliverer is None else await _run(self.deliverer.stats)
        return web.json_response(stats)

    async def replay(self, r: web.Request) -> web.Response:
        target = r.match_info["target"]
        if self.deliverer is None or target not in {s.name for s in self.deliverer.senders}:
            return web.json_response({"error": f"no delivery target {target!r}"}, status=404)
        n = await _run(self.deliverer.replay, target)
        return web.json_response({"target": target, "requeued": n})

    async def windows_csv(self, r: web.Request) -> web.Response:
        rows = await _run(
            self.store.windows,
            r.query.get("sensor"),
            r.query.get("gateway"),
            seconds_ns(r, "since", 0),
            seconds_ns(r, "until", _END),
            integer(r, "limit", MAX_LIMIT, 1, MAX_LIMIT),
        )
        return _csv(to_csv(rows, WINDOW_COLUMNS), "windows.csv")

    async def incidents_csv(self, r: web.Request) -> web.Response:
        q = IncidentQuery(
            since_ns=seconds_ns(r, "since", 0),
            until_ns=seconds_ns(r, "until", _END),
            limit=integer(r, "limit", MAX_LIMIT, 1, MAX_LIMIT),
        )
        rows = await _run(self.store.incidents, q)
        return _csv(to_csv(rows, INCIDENT_COLUMNS), "incidents.csv")

    def attach(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        app.router.add_get("/api/v1/deliveries", self.deliveries)
        app.router.add_post("/api/v1/deliveries/{target}/replay", self.replay)
        app.router.add_get("/api/v1/export/windows.csv", self.windows_csv)
        app.router.add_get("/api/v1/export/incidents.csv", self.incidents_csv)
