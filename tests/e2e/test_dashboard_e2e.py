"""The dashboard in Debian's Chromium against the whole pipeline with real data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from demo.devstack.deployment import http_json
from demo.pipeline import ROOT, Pipeline
from demo.services import free_port
from tests.support.browser import chromium

pytestmark = [
    pytest.mark.processes,
    pytest.mark.browser,
    pytest.mark.mqtt,
    pytest.mark.tpm,
    pytest.mark.opcua,
    pytest.mark.slow,
]

SCENARIO = ROOT / "configs" / "demo" / "scenario-e2e.yaml"
SPIKED = "line1.press1.bearing_temp"  # spiked at 20 s by the scenario


def _get(url: str) -> object:
    status, body = http_json(url, timeout=5)  # sends the pipeline's output API token
    assert status == 200, body
    return body


def _wait_alert(api: str, sensor: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alerts = _get(f"{api}/alerts?since=0")
        assert isinstance(alerts, list)
        if any(a["sensor"] == sensor for a in alerts):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no alert for {sensor} within {timeout_s} s")


def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``check`` (the page's CSP forbids Playwright's eval-based waits)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"dashboard: {what} within {timeout_s} s")
        time.sleep(0.2)


def _drive(dashboard: str, api: str, gateways: int, signin: str) -> list[str]:
    errors: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(signin)  # the one-time link the demo prints
        page.goto(f"{dashboard}?sensor=gw1/{SPIKED}")
        chart = page.locator("#chart")
        _until(lambda: int(chart.get_attribute("data-points") or 0) > 0, "chart points")
        cards = page.locator("#clusters .card .state")
        _until(lambda: cards.all_inner_texts() == ["verified", "verified"], "clusters verified")
        rows = page.locator("#gateways tbody tr")
        _until(lambda: rows.count() == gateways, "gateway rows")
        health = page.locator("#gateways tbody tr td:nth-child(2)")
        _until(lambda: health.all_inner_texts() == ["ok"] * gateways, "gateways healthy")
        # the spike appears (in the alert list and as a marker) while the page is open
        _wait_alert(api, SPIKED, 60)
        page.wait_for_selector(f"#alerts tbody tr[data-sensor='{SPIKED}']", timeout=10_000)
        _until(lambda: int(chart.get_attribute("data-alerts") or 0) > 0, "alert marker", 10)
        # ... and as an incident of that sensor, the same one the API lists
        incidents = _get(f"{api}/incidents?sensor={SPIKED}")
        assert isinstance(incidents, list)
        assert incidents
        page.wait_for_selector(
            f"#incidents tbody tr[data-id='{incidents[0]['id']}']", timeout=10_000
        )
    return errors


async def test_dashboard_shows_live_pipeline(tmp_path: Path) -> None:
    """Signed in by the one-time link: chart, spike flagged and an incident, clusters, gateways."""
    async with Pipeline(
        tmp_path / "state",
        sim_scenario=SCENARIO,
        sim_duration=60.0,
        fresh=True,
        dashboard_port=free_port(),
    ) as p:
        assert p.urls is not None
        assert p.urls.signin_link_file is not None
        await p.wait_subscribed()
        signin = p.urls.signin_link_file.read_text().strip()
        errors = await asyncio.to_thread(_drive, p.urls.dashboard, p.urls.output_api, 2, signin)
    assert errors == []
