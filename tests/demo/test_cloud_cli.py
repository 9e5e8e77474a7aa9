"""``python -m demo.cloud`` (the cloud half of docs/QUICKSTART-own-plant.md): first-run errors.

A port another program holds, a stale window count from an earlier run and a
foreign web server on the dashboard port each end with a message that names
the port or the sensors and what to do, never with a traceback or a false
"released windows".
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo import cloud
from demo.services import free_port
from gateway.init.writer import load_trust


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def test_prepare_refuses_a_dashboard_port_in_use(
    tmp_path: Path, held_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails on the code before this change: prepare accepted it and `start` died later."""
    rc = cloud.main(["prepare", "--state", str(tmp_path), "--dashboard-port", str(held_port)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--dashboard-port {held_port}" in err
    assert "pick a free port" in err
    assert not (tmp_path / "cloud.json").exists()  # nothing half-prepared


def test_start_names_the_service_ports_another_program_holds(
    tmp_path: Path, held_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails on the code before this change: it tried the gateways, then the services died."""
    ports = {"party0": free_port(), "party1": free_port(), "dealer": free_port()}
    ports["output"] = held_port
    (tmp_path / "cloud.json").write_text(json.dumps({"policy": "unused", "ports": ports}))
    rc = cloud.main(["start", "--state", str(tmp_path), "--gateway", "absent.yaml"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{held_port} (output)" in err
    assert "party0" not in err


def test_windows_of_an_earlier_run_do_not_count() -> None:
    """A resumed run whose gateway sends nothing must not look done (fails before this change:
    `wait --windows` accepted any window count above zero, old ones included)."""
    wanted = {"a", "b"}
    before = {"a": 171, "b": 171}
    assert cloud.missing_windows(wanted, before, {"a": 171, "b": 171}) == ["a", "b"]
    assert cloud.missing_windows(wanted, before, {"a": 172, "b": 171}) == ["b"]
    assert cloud.missing_windows(wanted, {}, {"a": 1, "b": 1}) == []
    assert cloud.missing_windows(wanted, {}, {"a": 1}) == ["b"]


class _Foreign(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"<html>not here</html>")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_wait_reports_another_program_on_the_dashboard_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails on the code before this change: a JSONDecodeError traceback."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Foreign)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ports = {"output": server.server_address[1]}
        (tmp_path / "cloud.json").write_text(json.dumps({"policy": "unused", "ports": ports}))
        rc = cloud.main(["wait", "--state", str(tmp_path), "--timeout", "1.5"])
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr().out
    assert rc == 1
    assert "another program answered" in out


def test_a_port_whose_connections_linger_in_time_wait_is_free() -> None:
    """Resuming right after a stop (step 10): the services' closed connections leave their
    ports in TIME_WAIT, which the services' own bind allows (SO_REUSEADDR). Fails on the
    first version of this check: it called those ports held and `start` refused to resume."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server side closes first: its end stays in TIME_WAIT
    client.close()
    listener.close()
    assert not cloud.port_in_use(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("0.0.0.0", port))  # a program listening on every address
        other.listen(1)
        assert cloud.port_in_use(port)


def test_prepare_with_the_owner_key_writes_a_trust_file_init_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quickstart step 3 without hand edits: trust.yaml names the owner's key instead of the
    measurement, so `init --trust` writes a gateway.yaml that needs no edit (fails on the code
    before this change: there was no --owner-key, and the page said to edit gateway.yaml)."""
    key = Ed25519PrivateKey.generate().public_key()
    pub = tmp_path / "owner.pub"
    pub.write_text(base64.b64encode(key.public_bytes_raw()).decode() + "\n")
    state = tmp_path / "cloud"
    args = ["prepare", "--state", str(state), "--owner-key", str(pub)]
    assert cloud.main(args) == 2  # without the manifest the parties would serve
    assert "--owner-key needs --release-manifest" in capsys.readouterr().err
    assert cloud.main([*args, "--release-manifest", str(state / "manifest.json")]) == 0
    doc = load_trust(state / "trust.yaml")
    assert doc.attestation.allowed_measurements == ()
    assert doc.trust is not None
    assert doc.trust.owner_key == key.public_bytes_raw().hex()


def test_prepare_names_an_unreadable_owner_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "owner.pub"
    bad.write_text("not a key\n")
    rc = cloud.main(
        ["prepare", "--state", str(tmp_path / "c"), "--owner-key", str(bad),
         "--release-manifest", str(tmp_path / "m.json")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--owner-key {bad}" in err
    assert "tecc-cluster admin owner-key init" in err


def test_wait_never_reads_a_state_file_that_start_is_rewriting(tmp_path: Path) -> None:
    """``start`` rewrites cloud.json while ``wait`` (step 10 of the quickstart) reads it.

    Fails on the code before this change, which truncated and then wrote the file:
    a read in between saw it empty (``JSONDecodeError`` in ``demo.cloud wait``, seen once
    on a busy machine). Now the file is replaced by a rename, so every read is whole.
    """
    state = {"ports": {"output": 1}, "units": {f"sensor-{i}": "degC" for i in range(5000)}}
    cloud._write_state(tmp_path, state)
    args = argparse.Namespace(state=str(tmp_path))
    done = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                if cloud._state(args) != state:
                    bad.append("a different document")
            except json.JSONDecodeError as exc:
                bad.append(str(exc))
            reads += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(100):
            cloud._write_state(tmp_path, state)
    finally:
        done.set()
        t.join()
    assert reads > 0
    assert bad == []
