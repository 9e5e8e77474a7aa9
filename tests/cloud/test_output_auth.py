"""The output service's front door against real processes: roles, Host, Origin, OIDC, TLS.

The output service runs as its own process; the OIDC issuer too
(``tests/support/oidc_issuer.py``). Every test here fails on the code before
this change, which served every route to anyone who could reach the port.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import expect

from cloud_tecc.config import load_output
from cloud_tecc.output.auth import RULES, Role
from cloud_tecc.output.server import OutputService
from cloud_tecc.service.base import open_enclave
from demo.devstack.deployment import ROOT
from demo.services import free_port
from tests.support.browser import chromium

from .scenario import POLICY
from .services import Deployment, http_json

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def _request(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, _, rest = url.removeprefix("http://").partition("/")
    name, _, port = host.partition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=10)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    body = b"{}" if method == "POST" else None
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    conn.request(method, "/" + rest, body=body, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    """A real OIDC issuer process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.oidc_issuer", "--port", str(port)], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/jwks", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory, issuer: str) -> Iterator[Deployment]:
    """The output service alone, with local tokens, OIDC and a separate ops listener."""
    root = tmp_path_factory.mktemp("auth")
    dep = Deployment(root, POLICY, {"gw-a": Ed25519PrivateKey.generate()})
    dep.ports["ops"], dep.ports["intake"] = free_port(), free_port()
    dep.output_extra = {
        "auth": {
            "oidc": {"issuer": issuer, "client_id": "dashboard"},
            "ops_listen": {"host": "127.0.0.1", "port": dep.ports["ops"]},
            "intake_listen": {"host": "127.0.0.1", "port": dep.ports["intake"]},
        }
    }
    dep.write_configs()
    dep.start("output")
    try:
        deadline = time.monotonic() + 30
        while not dep.output_token_file.exists() or not _listening(dep):
            assert time.monotonic() < deadline, dep.log_path("output").read_text()[-2000:]
            time.sleep(0.1)
        yield dep
    finally:
        dep.stop_all()


def _listening(dep: Deployment) -> bool:
    try:
        _request(dep.url("output") + "/auth/signin")
    except OSError:
        return False
    return True


def _token(dep: Deployment, role: str) -> str:
    admin = dep.output_token_file.read_text().strip()
    status, _, body = _request(dep.url("output") + "/api/v1/tokens", token=admin)
    assert status == 200, body
    req = urllib.request.Request(
        dep.url("output") + "/api/v1/tokens",
        data=json.dumps({"name": f"t-{role}", "role": role}).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.loads(r.read())["token"])


def test_every_route_has_a_rule(tmp_path: Path, output: Deployment) -> None:
    """The service's router holds no route without an access rule (fail closed).

    Fails on the code before this change: no rule table existed; every route was open.
    """
    cfg = load_output(output.root / "output.yaml")
    cfg = replace(cfg, service=replace(cfg.service, state_dir=tmp_path / "o"))
    svc = OutputService(cfg, open_enclave(cfg.service))
    routes = {(r.method, r.resource.canonical) for r in svc.app.router.routes() if r.resource}
    routes -= {("HEAD", path) for _, path in routes}
    assert routes <= set(RULES), routes - set(RULES)
    svc.store.close()


def test_every_route_refuses_the_wrong_role(output: Deployment) -> None:
    """No credential → 401 (the page: to sign-in); a lower role → 403; the role → served.

    Fails on the code before this change: every route answered without credentials.
    """
    tokens = {Role.VIEWER: _token(output, "viewer"), Role.OPERATOR: _token(output, "operator")}
    tokens[Role.ADMIN] = output.output_token_file.read_text().strip()
    checked = 0
    for (method, path), access in RULES.items():
        if not isinstance(access.value, Role) or path in ("/metrics",):
            continue
        route = path
        for name, value in (
            ("{id}", "1"),
            ("{name}", "app.js"),
            ("{target}", "ops"),
            ("{party}", "0"),
            ("{action}", "approve"),
        ):
            route = route.replace(name, value)
        url = output.url("output") + route
        if path == "/api/v1/events":
            continue  # a stream: checked for 401 below
        status, _, _ = _request(url, method=method, headers={"Origin": output.url("output")})
        assert status in (401, 303), (method, path, status)
        for role, token in tokens.items():
            status, _, body = _request(
                url, method=method, token=token, headers={"Origin": output.url("output")}
            )
            if role < access.value:
                assert status == 403, (method, path, role, status)
            else:
                assert status not in (401, 403), (method, path, role, status, body[:200])
        checked += 1
    assert checked >= 15
    status, _, _ = _request(output.url("output") + "/api/v1/events")
    assert status == 401


def test_dns_rebinding_host_and_cross_origin_post_are_refused(output: Deployment) -> None:
    """A foreign Host (a rebinding page) gets 421 even with a valid token; a foreign Origin 403.

    Fails on the code before this change: any Host and Origin were served.
    """
    admin = output.output_token_file.read_text().strip()
    url = output.url("output") + "/api/v1/sensors"
    status, _, _ = _request(url, token=admin, headers={"Host": "attacker.example"})
    assert status == 421
    status, _, _ = _request(
        url, token=admin, headers={"Host": f"rebind.example:{output.ports['output']}"}
    )
    assert status == 421
    status, headers, _ = _request(url, token=admin)
    assert status == 200
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    status, headers, _ = _request(output.url("output") + "/")
    assert status == 303
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    ack = output.url("output") + "/api/v1/incidents/1/acknowledge"
    status, _, _ = _request(
        ack, method="POST", token=admin, headers={"Origin": "http://evil.example"}
    )
    assert status == 403


def test_metrics_and_health_live_on_the_ops_listener(output: Deployment) -> None:
    """With ops_listen set, /metrics and /healthz answer there and 404 on the public port.

    Fails on the code before this change: /metrics was only on the public listener, open to all.
    """
    admin = output.output_token_file.read_text().strip()
    for path in ("/metrics", "/healthz"):
        status, _, _ = _request(output.url("output") + path, token=admin)
        assert status == 404
        status, _, _ = _request(f"http://127.0.0.1:{output.ports['ops']}{path}")
        assert status == 200


def test_intake_listener_serves_only_the_service_routes(output: Deployment) -> None:
    """The intake port answers /attestation and /v1/results (self-authenticating), nothing else.

    Fails on the code before this change: there was no intake listener.
    """
    intake = f"http://127.0.0.1:{output.ports['intake']}"
    status, _, _ = _request(intake + "/attestation?nonce=" + "00" * 16)
    assert status == 200
    status, _, body = _request(intake + "/v1/results", method="POST")
    assert status == 403, body  # an envelope without a configured sender
    admin = output.output_token_file.read_text().strip()
    for path in ("/api/v1/sensors", "/", "/metrics"):
        assert _request(intake + path, token=admin)[0] == 404


def test_bearer_jwts_are_validated_against_the_issuers_jwks(
    output: Deployment, issuer: str
) -> None:
    """A JWT of the issuer with audience and role is served; wrong aud, expired, no role: not.

    Fails on the code before this change: the API took no bearer tokens at all.
    """
    url = output.url("output") + "/api/v1/sensors"

    def mint(**claims: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in claims.items())
        with urllib.request.urlopen(f"{issuer}/mint?{query}", timeout=5) as r:
            return str(r.read().decode())

    assert _request(url, token=mint(aud="dashboard", tecc_role="viewer"))[0] == 200
    assert _request(url, token=mint(aud="someone-else", tecc_role="viewer"))[0] == 401
    assert _request(url, token=mint(aud="dashboard", tecc_role="viewer", exp="1000"))[0] == 401
    assert _request(url, token=mint(aud="dashboard"))[0] == 401
    ack = output.url("output") + "/api/v1/incidents/1/acknowledge"
    assert _request(ack, method="POST", token=mint(aud="dashboard", tecc_role="viewer"))[0] == 403
    forged = mint(aud="dashboard", tecc_role="viewer")
    head, payload, sig = forged.split(".")
    assert _request(url, token=f"{head}.{payload}.{sig[::-1]}")[0] == 401


@pytest.mark.browser
def test_dashboard_oidc_sign_in_in_chromium(output: Deployment) -> None:
    """Authorization code + PKCE through the issuer signs the browser in with the issuer's role.

    Fails on the code before this change: there was no sign-in.
    """
    with chromium() as browser:
        page = browser.new_page()
        page.goto(output.url("output") + "/")
        expect(page).to_have_url(re.compile(r"/auth/signin$"))
        page.click("#oidc-signin")
        expect(page.locator("#whoami")).to_have_text("olga (operator)")
        cookie = next(c for c in page.context.cookies() if c["name"] == "tecc_session")
        assert cookie["httpOnly"]
        # a replayed callback (same state and code) is refused
        status, _, body = _request(output.url("output") + "/auth/oidc/callback?state=x&code=y")
        assert status == 401
        assert b"start again" in body


def test_non_loopback_listener_serves_tls_only(tmp_path: Path) -> None:
    """Listening on 0.0.0.0 serves HTTPS with a generated certificate; plain HTTP gets nothing.

    Fails on the code before this change: the listener served plain HTTP on every address.
    """
    dep = Deployment(tmp_path, POLICY, {"gw-a": Ed25519PrivateKey.generate()})
    dep.output_extra = {"listen": {"host": "0.0.0.0", "port": dep.ports["output"]}}
    dep.write_configs()
    dep.start("output")
    try:
        cert = dep.state_dir("output") / "tls" / "cert.pem"
        deadline = time.monotonic() + 30
        ctx = ssl.create_default_context(cafile=None)
        while True:
            try:
                ctx = ssl.create_default_context(cafile=str(cert))
                conn = http.client.HTTPSConnection(
                    "localhost", dep.ports["output"], context=ctx, timeout=5
                )
                conn.request("GET", "/auth/signin")
                resp = conn.getresponse()
                break
            except (OSError, ssl.SSLError):
                assert time.monotonic() < deadline, dep.log_path("output").read_text()[-2000:]
                time.sleep(0.2)
        assert resp.status == 200
        assert "max-age" in (resp.getheader("Strict-Transport-Security") or "")
        conn.close()
        assert "SHA-256 fingerprint" in dep.log_path("output").read_text()
        with pytest.raises((http.client.HTTPException, OSError)):
            http_json(dep.url("output") + "/auth/signin", timeout=3)
    finally:
        dep.stop_all()
