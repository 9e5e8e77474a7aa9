"""The dashboard in a real headless Chromium against a real deployment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import expect

from tests.support.browser import chromium

from .scenario import GATEWAYS, POLICY, gateways, make_scenario, upload_all, wait_epochs
from .services import Deployment, http_json

NONZERO = re.compile(r"^[1-9][0-9]*$")
pytestmark = [pytest.mark.processes, pytest.mark.browser, pytest.mark.slow]


def test_dashboard_shows_released_results(tmp_path: Path) -> None:
    """No console errors; windows and alert markers drawn; both clusters shown verified."""
    dep = Deployment(tmp_path, POLICY, {g: Ed25519PrivateKey.generate() for g in GATEWAYS})
    scn = make_scenario()
    try:
        dep.start_all()
        upload_all(gateways(dep), scn, range(scn.seconds))
        wait_epochs(dep, 3)
        _, alerts = http_json(dep.url("output") + "/api/v1/alerts")
        assert any(a["gateway"] == "gw-a" and a["sensor"] == "temp1" for a in alerts)
        errors: list[str] = []
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(dep.url("output") + "/?sensor=gw-a/temp1")
            # Locator assertions, not wait_for_function: the page's CSP forbids string eval.
            expect(page.locator("#chart")).to_have_attribute("data-points", NONZERO)
            expect(page.locator("#chart")).to_have_attribute("data-alerts", NONZERO)
            page.wait_for_selector("#alerts tbody tr[data-sensor='temp1']")
            cards = page.locator("#clusters .card .state")
            cards.first.wait_for()
            assert cards.all_inner_texts() == ["verified", "verified"]
            assert page.locator("#sensor option").count() == len(GATEWAYS) * 3
            expect(page.locator("#live")).to_have_text(re.compile(r"^live"))
            page.keyboard.press("Tab")  # the sensor picker is reachable from the keyboard
            expect(page.locator("#sensor")).to_be_focused()
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert errors == []
    finally:
        dep.stop_all()
