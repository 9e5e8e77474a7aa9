"""The real output service delivers its incidents to a signed webhook and exports CSV."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.output import targets
from demo.devstack.deployment import auth_headers
from demo.services import free_port

from .scenario import GATEWAYS, POLICY, gateways, make_scenario, upload_all, wait_epochs
from .services import Deployment, http_json

pytestmark = [pytest.mark.processes, pytest.mark.slow]
SECRET = b"webhook-secret"


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    bad: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = targets.verify_webhook(
            SECRET,
            body,
            self.headers.get(targets.TIMESTAMP_HEADER, ""),
            self.headers.get(targets.SIGNATURE_HEADER, ""),
            int(time.time()),
        )
        if ok:
            self.received.append(json.loads(body))
        else:
            self.bad.append(body.decode(errors="replace"))
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *_a: object) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def hook() -> Iterator[tuple[int, type[_Hook]]]:
    """A webhook receiver (a real HTTP server in a thread) that checks signatures."""
    handler = type("Hook", (_Hook,), {"received": [], "bad": []})
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, hook: tuple[int, type[_Hook]]
) -> Iterator[Deployment]:
    """A deployment whose output delivers to the webhook; the scenario's readings uploaded."""
    root = tmp_path_factory.mktemp("deliver")
    secret = root / "hook.secret"
    secret.write_bytes(SECRET)
    url = f"http://127.0.0.1:{hook[0]}/hook"
    delivery = {
        "webhooks": [{"name": "ops", "url": url, "secret_file": str(secret)}],
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


def test_incidents_reach_the_webhook_once_each(
    deployment: Deployment, hook: tuple[int, type[_Hook]]
) -> None:
    """Every incident the API lists arrives as its open transition, signed, once."""
    _, handler = hook
    _, incidents = http_json(deployment.url("output") + "/api/v1/incidents?limit=1000")
    assert incidents, "the scenario raises incidents"
    want = {f"{i['id']}:open" for i in incidents}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        keys = [r["key"] for r in handler.received]
        if want <= set(keys):
            break
        time.sleep(0.3)
    keys = [r["key"] for r in handler.received]
    assert want <= set(keys)
    assert len(keys) == len(set(keys))  # no transition delivered twice
    assert handler.bad == []
    _, stats = http_json(deployment.url("output") + "/api/v1/deliveries")
    assert stats["ops"]["delivered"] >= len(want)
    assert stats["ops"]["dead"] == 0


def test_csv_export_equals_the_api(deployment: Deployment) -> None:
    """windows.csv has the API's windows, one row each, with the same counts."""
    base = deployment.url("output")
    _, windows = http_json(base + "/api/v1/windows?limit=10000")
    req = urllib.request.Request(base + "/api/v1/export/windows.csv", headers=auth_headers(base))
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.read().decode())))
    assert len(rows) == len(windows)
    assert sorted(int(r["count"]) for r in rows) == sorted(int(w["count"]) for w in windows)


def test_delivery_routes_need_their_roles(deployment: Deployment) -> None:
    """Without a token the delivery status and the replay are refused."""
    base = deployment.url("output")
    for method, path in (("GET", "/api/v1/deliveries"), ("POST", "/api/v1/deliveries/ops/replay")):
        req = urllib.request.Request(
            base + path, method=method, data=b"" if method == "POST" else None
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        info.value.close()
        assert info.value.code in (401, 403)
