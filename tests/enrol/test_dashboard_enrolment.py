"""The dashboard's gateway enrolment panel and attestation incidents, end to end.

Real processes: two parties (each its own enrolment policy: party0 enrols a
gateway whose PCR 14 holds the launch measurement, party1 wants its
operator's approval), dealer, output, mosquitto, a manufactured swtpm and
the real agent; a real Chromium signed in to the output as admin; a real
webhook receiver as the output's delivery target.

Shown: the page lists the gateway pending at party1 and enrolled at party0;
a viewer's approve is refused (403) and so is an admin's with no valid MAC of
party1's operator key (the output alone cannot enrol); Approve in the page
with party1's operator key enrols it at party1, whose data then flows;
Revoke refuses its batches there (counted). Then PCR 14 is extended: party0
suspends the gateway at the next re-quote, its data is refused and counted,
and the output opens exactly one attestation incident (delivered to the
webhook), which closes when party0's operator approves the new PCR values
from the page.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from cloud_tecc.service import gateway_admin as ga
from demo.devstack.deployment import Deployment, http_json
from demo.services import free_port
from gateway.tpm import Tpm
from tests.cloud.services import metric
from tests.enrol.stack import GATEWAY, TOPIC, enrolling_stack, refused, state
from tests.gateway.publisher import publish
from tests.support.browser import chromium

pytestmark = [
    pytest.mark.tpm,
    pytest.mark.mqtt,
    pytest.mark.processes,
    pytest.mark.browser,
    pytest.mark.slow,
]


class _Hooks(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        self.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_a: object) -> None:
        """Quiet."""


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s} s")
        time.sleep(0.3)


def _post(dep: Deployment, path: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        dep.url("output") + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _cell(page: Page, party: int) -> Any:
    return page.locator(f"#enrolment tr[data-gateway='{GATEWAY}'] td[data-party='{party}']")


def _readings(dep: Deployment, party: str) -> float:
    return metric(dep, party, "tecc_ingest_readings_total")


def _attestation_incidents(dep: Deployment) -> list[dict[str, Any]]:
    status, rows = http_json(dep.url("output") + "/api/v1/incidents?detector=attestation")
    assert status == 200, rows
    return list(rows)


def _forged(dep: Deployment, token: str) -> tuple[int, Any]:
    """An approve of party1 whose MAC is not by a party1 operator key."""
    _, view = http_json(dep.url("output") + "/api/v1/enrolment")
    rec = next(g for g in view["gateways"] if g["gateway_id"] == GATEWAY)["clusters"]["1"]
    body = {
        "gateway_id": GATEWAY,
        "identity_key": rec["identity_key"],
        "operator": "alice",
        "issued_ms": int(time.time() * 1000),
        "nonce": "00" * 16,
        "mac": "11" * 32,
    }
    return _post(dep, "/api/v1/enrolment/1/approve", body, token)


def _signed(
    dep: Deployment, token: str, key: str, *, identity: str, issued_ms: int, nonce: str
) -> tuple[int, Any]:
    """An approve of party1 MACed with party1's operator key ``alice`` (as the page does)."""
    message = ga.statement(
        party="party1",
        action="approve",
        gateway_id=GATEWAY,
        identity_key=identity,
        issued_ms=issued_ms,
        nonce=nonce,
    )
    body = {
        "gateway_id": GATEWAY,
        "identity_key": identity,
        "operator": "alice",
        "issued_ms": issued_ms,
        "nonce": nonce,
        "mac": ga.mac(ga.parse_key(key), message),
    }
    return _post(dep, "/api/v1/enrolment/1/approve", body, token)


def test_dashboard_approves_revokes_and_raises_attestation_incidents(tmp_path: Any) -> None:
    hooks: list[dict[str, Any]] = []
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), type("H", (_Hooks,), {"seen": hooks}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "hook.secret").write_bytes(b"hook-secret")
    delivery = {
        "webhooks": [
            {
                "name": "ops",
                "url": f"http://127.0.0.1:{port}/hook",
                "secret_file": str(tmp_path / "hook.secret"),
            }
        ],
        "retry": {"base_s": 0.2, "max_s": 1.0},
    }
    errors: list[str] = []
    try:
        with (
            enrolling_stack(
                tmp_path,
                policies={"party1": {"approval": "operator"}},
                output_extra={"delivery": delivery},
                operator_keys={"party0": "olga", "party1": "alice"},
            ) as (stack, keys),
            chromium() as browser,
        ):
            dep = stack.dep
            _until(lambda: state(dep, "party0") == "enrolled", "party0 enrols", 30)
            _until(lambda: state(dep, "party1") == "pending", "party1 parks it", 30)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((dep.state_dir("output") / "signin-link").read_text().strip())
            expect(page.locator("#whoami")).to_have_text("admin (admin)")
            expect(_cell(page, 0).locator(".gstate")).to_have_text("enrolled", timeout=15_000)
            expect(_cell(page, 1).locator(".gstate")).to_have_text("pending")

            for sender in ("mallory", "output"):  # not the output / not sealed by it
                forged = {"sender": sender, "purpose": ga.LIST, "ct": "AAAA", "sig": "AAAA"}
                status, body = http_json(
                    dep.url("party1") + "/v1/admin/gateways", data=json.dumps(forged).encode()
                )
                assert status == 403, body
                assert GATEWAY not in json.dumps(body)
            unauthenticated = 'tecc_gateway_admin_requests_total{outcome="unauthenticated"}'
            assert metric(dep, "party1", unauthenticated) == 2

            admin = dep.output_token_file.read_text().strip()
            st, viewer = _post(dep, "/api/v1/tokens", {"name": "wall", "role": "viewer"}, admin)
            assert st == 200
            status, _ = _forged(dep, viewer["token"])
            assert status == 403  # the viewer role cannot approve
            status, answer = _forged(dep, admin)
            assert status == 403  # the output's admin without party1's operator key cannot
            assert answer["reason"] == "operator", answer
            assert state(dep, "party1") == "pending"

            page.fill("#opname-1", "alice")
            page.fill("#opkey-1", keys["party1"])
            _cell(page, 1).locator("button.act-approve").click()
            expect(_cell(page, 1).locator(".gstate")).to_have_text("enrolled", timeout=15_000)
            expect(page.locator("#enrolment-result")).to_contain_text("party1: gw-test is enrolled")
            assert state(dep, "party1") == "enrolled"
            time.sleep(1.0)  # the MQTT session is up
            publish(stack.broker_port, [(TOPIC, b"21.5")] * 100)
            _until(lambda: _readings(dep, "party1") == 100, "party1 accepts after approval", 90)

            _cell(page, 1).locator("button.act-revoke").click()
            expect(_cell(page, 1).locator(".gstate")).to_have_text("revoked", timeout=15_000)
            time.sleep(1.0)
            publish(stack.broker_port, [(TOPIC, b"22.5")] * 50)
            _until(lambda: _readings(dep, "party0") == 150, "party0 still accepts", 60)
            _until(lambda: refused(dep, "party1", "revoked") > 0, "party1 refuses, counted")
            assert _readings(dep, "party1") == 100
            assert _attestation_incidents(dep) == []
            _, view = http_json(dep.url("output") + "/api/v1/enrolment")
            identity = next(g for g in view["gateways"] if g["gateway_id"] == GATEWAY)["clusters"][
                "1"
            ]["identity_key"]
            now_ms = int(time.time() * 1000)
            old = _signed(
                dep,
                admin,
                keys["party1"],
                identity=identity,
                issued_ms=now_ms - 600_000,
                nonce="ab" * 16,
            )
            assert (old[0], old[1]["reason"]) == (403, "stale")
            first = _signed(
                dep, admin, keys["party1"], identity=identity, issued_ms=now_ms, nonce="cd" * 16
            )
            assert (first[0], first[1]["reason"]) == (403, "state")  # revoked stays revoked
            again = _signed(
                dep, admin, keys["party1"], identity=identity, issued_ms=now_ms, nonce="cd" * 16
            )
            assert (again[0], again[1]["reason"]) == (403, "replay")  # a recorded request
            assert state(dep, "party1") == "revoked"

            with Tpm(stack.tpm.tcti) as tpm:  # other software "launched" after enrolment
                tpm.extend_pcr(14, hashlib.sha256(b"other software").digest())
            _until(lambda: state(dep, "party0") == "suspended", "party0 suspends", 30)
            expect(_cell(page, 0).locator(".gstate")).to_have_text("suspended", timeout=15_000)
            _until(lambda: bool(_attestation_incidents(dep)), "the output opens an incident", 30)
            publish(stack.broker_port, [(TOPIC, b"23.5")] * 50)
            _until(lambda: refused(dep, "party0", "suspended") > 0, "party0 refuses, counted")
            assert _readings(dep, "party0") == 150
            time.sleep(5.0)  # more polls and re-quotes: still one incident
            [incident] = _attestation_incidents(dep)
            assert (incident["gateway"], incident["state"]) == (GATEWAY, "open")
            row = page.locator("#incidents tbody tr:has-text('attestation')")
            expect(row).to_have_count(1, timeout=15_000)

            page.fill("#opname-0", "olga")
            page.fill("#opkey-0", keys["party0"])
            _cell(page, 0).locator("button.act-approve").click()  # an authorised update
            expect(_cell(page, 0).locator(".gstate")).to_have_text("enrolled", timeout=15_000)
            _until(
                lambda: [i["state"] for i in _attestation_incidents(dep)] == ["closed"],
                "the incident closes once no cluster suspends the gateway",
                30,
            )
            _until(lambda: len(hooks) >= 2, "the webhook receives open and closed", 30)
    finally:
        server.shutdown()
        server.server_close()
    transitions = [(h["incident"]["detector"], h["transition"]) for h in hooks]
    assert transitions == [("attestation", "open"), ("attestation", "closed")]
    assert errors == []
