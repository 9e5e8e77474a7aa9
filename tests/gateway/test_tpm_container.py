"""The swtpm container's entry point (docker/swtpm/swtpm-entrypoint.sh), run locally.

The script runs the real swtpm and tpm2-tools, as in the container, on free
loopback ports: nobody can clear the TPM, the gateway sets its owner auth at
provisioning and unseals with it, and a stop/start cycle is an orderly
shutdown that the TPM no longer counts as a dictionary-attack failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from demo.services import free_port_pair, swtpm_argv
from tests.gateway.harness import ROOT, cli, write_config
from tests.gateway.receiver import FakeCluster, Platform
from tests.gateway.services import wait_port

pytestmark = [pytest.mark.tpm, pytest.mark.processes]
ENTRY = ROOT / "docker" / "swtpm" / "swtpm-entrypoint.sh"


@contextlib.contextmanager
def _entrypoint(state: Path, port: int) -> Iterator[None]:
    env = {**os.environ, "SWTPM_STATE": str(state), "SWTPM_PORT": str(port)}
    env["SWTPM_BIND"] = "127.0.0.1"
    state.mkdir(parents=True, exist_ok=True)
    with (state / "entry.log").open("ab") as log:
        proc = subprocess.Popen(["/bin/sh", str(ENTRY)], env=env, stdout=log, stderr=log)
    try:
        for _ in range(100):
            if (state / ".ready").exists():
                break
            if proc.poll() is not None:
                raise AssertionError((state / "entry.log").read_text())
            subprocess.run(["sleep", "0.1"], check=True)
        else:
            raise AssertionError("the entry point did not get the TPM ready")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def _lockout_counter(port: int) -> int:
    out = _tool("tpm2_getcap", "-T", f"swtpm:host=127.0.0.1,port={port}", "properties-variable")
    for line in out.stdout.splitlines():
        if line.strip().startswith("TPM2_PT_LOCKOUT_COUNTER:"):
            return int(line.split(":")[1], 16)
    raise AssertionError(out.stdout + out.stderr)


def test_bare_swtpm_counts_each_restart(tmp_path: Path) -> None:
    """Control: bare swtpm (the previous entry point) counts a stop after a DA-protected use.

    The gateway's primary and sealed keys used to be DA-protected objects,
    used at every start; this shows the counter check below can fail.
    """
    port = free_port_pair()
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    counts = []
    (tmp_path / "tpm").mkdir()
    for _ in range(2):
        proc = subprocess.Popen(swtpm_argv(tmp_path / "tpm", port), stderr=subprocess.DEVNULL)
        try:
            wait_port(port + 1)
            prim, obj = str(tmp_path / "p.ctx"), str(tmp_path / "o.ctx")
            _tool("tpm2_createprimary", "-T", tcti, "-c", prim)
            made = subprocess.run(
                ["tpm2_create", "-T", tcti, "-C", prim, "-i", "-", "-c", obj],
                input=b"secret",
                capture_output=True,
                check=False,
            )
            assert made.returncode == 0, made.stderr  # authorised with the primary's auth
            _tool("tpm2_flushcontext", "-T", tcti, "-t")
            counts.append(_lockout_counter(port))
        finally:
            proc.terminate()
            proc.wait(10)
    assert counts[1] > counts[0]


def test_container_tpm_is_the_gateways_only(tmp_path: Path) -> None:
    """Clear is refused, the owner auth is set by provisioning, restarts cost no DA tries.

    Fails on the code before this change: hierarchy auths were empty (any
    client could clear the TPM) and each container stop was an unorderly
    shutdown counted against the dictionary-attack limit of 3.
    """
    platform = Platform()
    clusters = [FakeCluster(i, 1 + i, platform, {}) for i in range(2)]
    port = free_port_pair()
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    cfg = write_config(tmp_path, clusters=clusters, platform=platform, tcti=tcti)
    doc = yaml.safe_load(cfg.read_text())
    doc["tpm"]["owner_auth_file"] = str(tmp_path / "state" / "tpm-owner.auth")
    cfg.write_text(yaml.safe_dump(doc))
    state = tmp_path / "tpm"
    with _entrypoint(state, port):
        prov = cli("provision", "--config", str(cfg))
        assert prov.returncode == 0, prov.stderr
        for hierarchy in ("p", "l"):
            assert _tool("tpm2_clear", "-T", tcti, "-c", hierarchy).returncode != 0
        # the owner hierarchy now needs the auth: a primary without it is refused
        assert _tool("tpm2_createprimary", "-T", tcti, "-c", "/dev/null").returncode != 0
        first = _lockout_counter(port)
    for _ in range(4):  # more restarts than the old limit of 3 failures
        with _entrypoint(state, port):
            status = cli("launch", "--config", str(cfg), "status")
            assert status.returncode == 0, status.stderr
            last = _lockout_counter(port)
    assert last == first == 0
    assert (tmp_path / "state" / "tpm-owner.auth").stat().st_mode & 0o777 == 0o600
    assert (state / "lockout.auth").stat().st_mode & 0o777 == 0o600
