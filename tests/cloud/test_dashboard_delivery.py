"""The dashboard's Delivery panel in a real Chromium: per target what ``/api/v1/deliveries`` says.

A real deployment delivers its incidents to two webhook targets served by real
HTTP receivers in this process: ``ops`` accepts every transition, ``refuser``
answers 400 (a permanent refusal, so each transition becomes a dead letter).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Page, expect

from demo.services import free_port
from tests.support.browser import chromium

from .scenario import GATEWAYS, POLICY, gateways, make_scenario, upload_all, wait_epochs
from .services import Deployment, http_json

pytestmark = [pytest.mark.processes, pytest.mark.browser, pytest.mark.slow]
REFUSAL = "no such tenant"


class _Receiver(BaseHTTPRequestHandler):
    status = 204

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b"" if self.status < 300 else REFUSAL.encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_a: object) -> None:
        """Quiet."""


def _serve(status: int) -> tuple[ThreadingHTTPServer, str]:
    handler = type("Receiver", (_Receiver,), {"status": status})
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}/hook"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A deployment delivering to an accepting and a refusing webhook; readings uploaded."""
    root = tmp_path_factory.mktemp("dash-delivery")
    secret = root / "hook.secret"
    secret.write_bytes(b"webhook-secret")
    servers = [_serve(204), _serve(400)]
    delivery = {
        "webhooks": [
            {"name": name, "url": url, "secret_file": str(secret)}
            for name, (_, url) in zip(("ops", "refuser"), servers, strict=True)
        ],
        "retry": {"base_s": 0.2, "max_s": 2.0},
    }
    dep = Deployment(
        root,
        POLICY,
        {g: Ed25519PrivateKey.generate() for g in GATEWAYS},
        output_extra={"delivery": delivery},
    )
    scn = make_scenario()
    try:
        dep.start_all()
        upload_all(gateways(dep), scn, range(scn.seconds))
        wait_epochs(dep, 3)
        yield dep
    finally:
        dep.stop_all()
        for server, _ in servers:
            server.shutdown()
            server.server_close()


def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``check`` (the page's CSP forbids Playwright's eval-based waits)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"dashboard: {what} within {timeout_s} s")
        time.sleep(0.3)


def _deliveries(dep: Deployment) -> dict[str, Any]:
    status, body = http_json(dep.url("output") + "/api/v1/deliveries")
    assert status == 200, body
    return dict(body)


def _expected(stats: dict[str, Any]) -> list[list[str]]:
    rows = []
    for target, s in stats.items():
        dead = s["dead_letters"]
        error = dead[0]["last_error"] if dead else "—"
        rows.append([target, str(s["pending"]), str(s["delivered"]), str(s["dead"]), error])
    return rows


def _shown(page: Page) -> list[list[str]]:
    rows = page.locator("#deliveries tbody tr").all()
    return [r.locator("td").all_text_contents() for r in rows]


def _viewer_token(dep: Deployment) -> str:
    admin = dep.output_token_file.read_text().strip()
    req = urllib.request.Request(
        dep.url("output") + "/api/v1/tokens",
        data=json.dumps({"name": "wall-screen", "role": "viewer"}).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.loads(r.read())["token"])


def test_delivery_panel_equals_the_api(deployment: Deployment) -> None:
    """One row per target with the API's pending / delivered / dead and newest dead letter's error.

    The counts change while the deliverer works, so the page and the API are
    read until they agree at one moment, then again once delivery has settled
    (nothing pending, every incident delivered to ``ops`` and dead at ``refuser``).
    """
    dep = deployment
    errors: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((dep.state_dir("output") / "signin-link").read_text().strip())
        expect(page.locator("#whoami")).to_have_text("admin (admin)")
        expect(page.locator("#delivery-section")).to_be_visible()
        _until(lambda: _shown(page) == _expected(_deliveries(dep)), "rows equal the API's")
        _, incidents = http_json(dep.url("output") + "/api/v1/incidents?limit=1000")
        assert incidents, "the scenario raises incidents"

        def settled() -> bool:
            s = _deliveries(dep)
            return bool(
                s["ops"]["delivered"] >= len(incidents)
                and s["refuser"]["dead"] >= len(incidents)
                and s["ops"]["pending"] == s["refuser"]["pending"] == 0
            )

        _until(settled, "delivery settled", 60)
        _until(lambda: _shown(page) == _expected(_deliveries(dep)), "settled rows equal the API's")
        shown = {r[0]: r for r in _shown(page)}
        assert list(shown) == ["ops", "refuser"]
        assert shown["ops"][3:] == ["0", "—"]
        assert shown["refuser"][2] == "0"
        assert shown["refuser"][4] == f"HTTP 400: {REFUSAL}"
        expect(page.locator("#deliveries tr[data-target='refuser'] td").nth(3)).to_have_class("bad")
        expect(page.locator("#delivery-note")).to_be_hidden()
    assert errors == []


def test_delivery_panel_tells_a_viewer_it_needs_the_operator_role(deployment: Deployment) -> None:
    """A viewer's page says "operator role needed" where the table would be; nothing breaks."""
    dep = deployment
    token = _viewer_token(dep)
    errors: list[str] = []
    with chromium() as browser:
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(dep.url("output") + "/")
        page.fill("#token", token)
        page.click("button[type=submit]")
        expect(page.locator("#whoami")).to_have_text("wall-screen (viewer)")
        expect(page.locator("#delivery-note")).to_have_text(re.compile("operator role needed"))
        expect(page.locator("#delivery-section")).to_be_visible()
        expect(page.locator("#deliveries")).to_be_hidden()
        # the rest of the page still loads: the 403 is not the page's error
        expect(page.locator("#live")).to_have_text(re.compile(r"^(live|polling)"))
        expect(page.locator("#incidents tbody tr").first).to_be_visible()
        status = page.request.get(dep.url("output") + "/api/v1/deliveries").status
        assert status == 403
    assert errors == []


def test_delivery_panel_is_hidden_without_targets(tmp_path: Path) -> None:
    """No ``delivery:`` section → the API lists no target and the page shows no panel."""
    dep = Deployment(tmp_path, POLICY, {g: Ed25519PrivateKey.generate() for g in GATEWAYS})
    try:
        dep.start_all()
        assert _deliveries(dep) == {}
        with chromium() as browser:
            page = browser.new_page()
            page.goto((dep.state_dir("output") / "signin-link").read_text().strip())
            expect(page.locator("#live")).to_have_text(re.compile(r"^(live|polling) · updated"))
            expect(page.locator("#delivery-section")).to_be_hidden()
            assert page.locator("#deliveries tbody tr").count() == 0
    finally:
        dep.stop_all()
