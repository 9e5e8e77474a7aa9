"""The demo's one-line live status, scraped from the services' own endpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from demo.devstack.deployment import auth_headers
from demo.pipeline import Pipeline, PipelineUrls


def signin_hint(urls: PipelineUrls) -> str:
    """How to sign the browser in: the one-time link, or the admin token's file."""
    link = urls.signin_link_file
    once = link.read_text().strip() if link is not None and link.exists() else ""
    where = urls.output_token_file
    return (
        f"sign in: {once or urls.dashboard} (one-time link, 10 min)\n"
        f"  or paste the admin API token from {where}; API: Authorization: Bearer <token>"
    )


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (``_total`` included) in Prometheus text."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in (name, name + "_total"):
                total += s.value
    return total


@dataclass(slots=True)
class StatusLine:
    """Keeps the previous sample so that it can print a rate."""

    pipeline: Pipeline
    _last: tuple[float, float] | None = None

    async def _get(self, s: aiohttp.ClientSession, url: str) -> Any:
        async with s.get(url, headers=auth_headers(url), ssl=False) as r:  # loopback status
            if url.split("?", maxsplit=1)[0].endswith(("/clusters", "/summary")):
                return await r.json()
            return await r.text()

    async def render(self) -> str:
        """One line: readings/s, spool depth, alerts, clusters attested, restarts."""
        p = self.pipeline
        assert p.urls is not None
        restarts = sum(c.restarts for c in p.supervisor.children.values())
        down = [n for n, c in p.supervisor.children.items() if not c.running]
        accepted, depth, alerts, attested, incidents = 0.0, 0.0, "?", "?", "?"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
                accepted = metric_sum(
                    await self._get(s, p.urls.parties[0] + "/metrics"), "tecc_ingest_readings"
                )
                for url in p.urls.gateway_metrics.values():
                    depth += metric_sum(await self._get(s, url), "gateway_spool_depth_batches")
                summary = await self._get(s, p.urls.output_api + "/summary")
                alerts = str(summary["flags"])
                by_state = summary["incidents"]
                live = by_state["open"] + by_state["acknowledged"]
                incidents = f"{live}/{live + by_state['closed']}"
                clusters = await self._get(s, p.urls.output_api + "/clusters")
                attested = f"{sum(bool(c['attested']) for c in clusters)}/{len(clusters)}"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError):
            pass
        now = time.monotonic()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = max(0.0, (accepted - self._last[1]) / (now - self._last[0]))
        self._last = (now, accepted)
        line = (
            f"readings/s {rate:7.1f} | spool {depth:4.0f} batches | alerts {alerts:>5} | "
            f"incidents open/all {incidents} | "
            f"clusters attested {attested} | restarts {restarts}"
        )
        return line + (f" | down: {','.join(down)}" if down else "")
