"""Suspension for silence, end to end: a gateway whose re-quotes stop reaching a party.

Real processes: two parties (both enrol automatically: PCR 14 holds the
launch measurement), dealer, output, mosquitto, a manufactured swtpm and the
real agent. Between the agent and party0 sits a plain HTTP proxy that
forwards everything; the test makes it answer party0's re-quote endpoints
(``/v1/attest/*``) with 503 while batches still pass, as a gateway whose
attestation stopped answering while its uplink did not.

Shown: after ``requote_s + grace_s`` of silence party0 suspends the gateway
(party1, which still gets quotes, keeps it enrolled); its batches are refused
at party0 and counted with reason ``suspended`` (party1 accepts them); the
output opens exactly one attestation incident for it; once the re-quotes get
through again party0 reinstates it, accepts the spooled batches, and the
incident closes.
"""

from __future__ import annotations

import functools
import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from demo.devstack.deployment import Deployment, http_json
from demo.services import free_port
from tests.cloud.services import metric
from tests.enrol.stack import GATEWAY, TOPIC, admin, enrolling_stack, refused, state
from tests.gateway.publisher import publish

pytestmark = [pytest.mark.tpm, pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host", "content-length"})


class _Proxy:
    """A forwarding HTTP proxy to one party that can hold back the re-quote endpoints."""

    def __init__(self) -> None:
        self.target = ""  # the party's base URL, set once the deployment exists
        self.block_attest = threading.Event()
        self.blocked = 0
        self.port = free_port()

    def url(self, target: str) -> str:
        self.target = target
        return f"http://127.0.0.1:{self.port}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/v1/attest/") and proxy.block_attest.is_set():
                    proxy.blocked += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                up = urllib.parse.urlsplit(proxy.target)
                conn = http.client.HTTPConnection(up.hostname or "", up.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def log_message(self, *_a: object) -> None:
                """Quiet."""

        return Forward


@contextmanager
def _proxy() -> Iterator[_Proxy]:
    proxy = _Proxy()
    server = ThreadingHTTPServer(("127.0.0.1", proxy.port), proxy.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s} s")
        time.sleep(0.3)


def _readings(dep: Deployment, party: str) -> float:
    return metric(dep, party, "tecc_ingest_readings_total")


def _in_state(dep: Deployment, party: str, want: str) -> bool:
    return state(dep, party) == want


def _has(dep: Deployment, party: str, readings: int) -> bool:
    return _readings(dep, party) == readings


def _incidents(dep: Deployment) -> list[dict[str, Any]]:
    status, rows = http_json(dep.url("output") + "/api/v1/incidents?detector=attestation")
    assert status == 200, rows
    return list(rows)


def test_a_gateway_that_stops_quoting_is_suspended_refused_and_reinstated(
    tmp_path: Path,
) -> None:
    with (
        _proxy() as proxy,
        enrolling_stack(
            tmp_path,
            policies={},
            party_extra={"tls": False},  # the proxy reads paths
            gateway_url=lambda d, i: proxy.url(d.url("party0")) if i == 0 else d.url("party1"),
        ) as (stack, _),
    ):
        dep = stack.dep
        for party in ("party0", "party1"):
            _until(functools.partial(_in_state, dep, party, "enrolled"), f"{party} enrols", 30)
        time.sleep(1.0)  # the MQTT session is up
        publish(stack.broker_port, [(TOPIC, b"21.5")] * 40)
        for party in ("party0", "party1"):
            _until(functools.partial(_has, dep, party, 40), f"{party} accepts 40 readings", 60)
        assert _incidents(dep) == []
        assert refused(dep, "party0", "suspended") == 0

        proxy.block_attest.set()  # party0 hears no more quotes; batches still pass
        _until(lambda: state(dep, "party0") == "suspended", "party0 suspends the silent gateway")
        assert proxy.blocked > 0
        [rec] = admin(dep, "party0", "list")["gateways"]
        assert "silent" in str(rec["reason"]), rec
        # not before requote_s + grace_s (1 + 5 s) of silence since its last quote
        assert int(rec["updated_ns"]) - int(rec["last_quote_ns"]) >= 6_000_000_000, rec
        assert state(dep, "party1") == "enrolled"  # its quotes reach party1
        publish(stack.broker_port, [(TOPIC, b"22.5")] * 30)
        _until(lambda: _readings(dep, "party1") == 70, "party1 accepts the 30 readings", 60)
        _until(
            lambda: refused(dep, "party0", "suspended") > 0,
            "party0 refuses the silent gateway's batches, counted as suspended",
        )
        assert _readings(dep, "party0") == 40
        _until(lambda: bool(_incidents(dep)), "the output opens an attestation incident", 30)
        time.sleep(4.0)  # more polls and sweeps: still one incident
        [incident] = _incidents(dep)
        assert (incident["gateway"], incident["state"]) == (GATEWAY, "open"), incident
        assert state(dep, "party0") == "suspended"

        proxy.block_attest.clear()  # the gateway's quotes get through again
        _until(lambda: state(dep, "party0") == "enrolled", "party0 reinstates it", 90)
        _until(lambda: _readings(dep, "party0") == 70, "party0 accepts the spooled batches", 90)
        _until(
            lambda: [i["state"] for i in _incidents(dep)] == ["closed"],
            "the incident closes once it attests again",
            30,
        )
        [closed] = _incidents(dep)
        assert closed["id"] == incident["id"]
