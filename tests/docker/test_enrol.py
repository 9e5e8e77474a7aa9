"""docker/enrol.sh (tecc-enrol) against a real swtpm, outside a container.

The script runs exactly as in the compose `enrol` service, with its paths
moved to a temp dir by environment variables and the TPM on a free loopback
port; `tecc-cluster` and `tecc-gateway` are this checkout's CLIs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_tecc.config import load_party
from cloud_tecc.enclave.platform import SimulatedPlatform
from gateway.config_yaml import load_config as load_gateway_config
from tests.gateway.services import swtpm

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CLIS = {"tecc-cluster": "cloud_tecc", "tecc-gateway": "gateway"}

pytestmark = [pytest.mark.tpm, pytest.mark.slow]


def _bin_dir(tmp: Path) -> Path:
    """Wrappers named like the console scripts, running this checkout's code."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, module in CLIS.items():
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        wrapper.chmod(0o755)
    return bin_dir


def _enrol(tmp: Path, bin_dir: Path, templates: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "TECC_TEMPLATES": str(templates),
        "TECC_POLICY": str(ROOT / "configs/policy.yaml"),
        "TECC_CONFIG_DIR": str(tmp / "config"),
        "TECC_PLATFORM_DIR": str(tmp / "platform"),
        "TECC_GATEWAY_STATE": str(tmp / "gateway"),
    }
    return subprocess.run(
        ["/bin/sh", str(DOCKER / "enrol.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _templates(tmp: Path, tcti: str) -> Path:
    """The compose templates with container paths moved into ``tmp``."""
    out = tmp / "templates"
    out.mkdir()
    for src in (DOCKER / "configs").glob("*.tmpl"):
        text = src.read_text(encoding="utf-8")
        text = text.replace("swtpm:host=swtpm,port=2321", tcti)
        text = text.replace("/var/lib/tecc/", f"{tmp}/")
        text = text.replace("/etc/tecc/policy.yaml", str(ROOT / "configs/policy.yaml"))
        (out / src.name).write_text(text, encoding="utf-8")
    return out


def test_enrol_provisions_once_and_renders_consistent_configs(tmp_path: Path) -> None:
    """Platform key, measurement and gateway key end up where the services need them."""
    with swtpm(tmp_path / "tpm") as tpm:
        templates = _templates(tmp_path, f"swtpm:host=127.0.0.1,port={tpm.port}")
        bin_dir = _bin_dir(tmp_path)
        first = _enrol(tmp_path, bin_dir, templates)
        assert first.returncode == 0, first.stderr
        assert "provisioning the gateway" in first.stderr

        gw = load_gateway_config(tmp_path / "config/gateway.yaml")
        plats = [
            SimulatedPlatform.load_or_create(tmp_path / f"platform/cluster{i}") for i in (0, 1)
        ]
        assert gw.attestation.platform_keys == {
            p.key_id: bytes.fromhex(p.public_key_hex) for p in plats
        }
        assert plats[0].key_id != plats[1].key_id  # one platform root per cluster
        measured = subprocess.run(
            [bin_dir / "tecc-cluster", "measure", "--policy", ROOT / "configs/policy.yaml"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert gw.attestation.allowed_measurements == frozenset({bytes.fromhex(measured)})

        gateway_key = (tmp_path / "gateway/identity.pub").read_text().strip()
        assert len(bytes.fromhex(gateway_key)) == 32
        for index in (0, 1):
            party = load_party(tmp_path / f"config/cluster{index}.yaml")
            assert party.gateways == {"gw-demo": gateway_key}
            for extra in ("shard0-standby", "shard1"):
                worker = load_party(tmp_path / f"config/cluster{index}-{extra}.yaml")
                assert worker.gateways == {"gw-demo": gateway_key}
        # each party's own JetStream credential (0600), in its nats-server config
        auth = [tmp_path / f"nats-auth/cluster{i}" for i in (0, 1)]
        passwords = [(a / "nats.password").read_text() for a in auth]
        assert len(set(passwords)) == 2
        assert all(len(p) == 48 for p in passwords)
        for a, password in zip(auth, passwords, strict=True):
            assert (a / "nats.password").stat().st_mode & 0o077 == 0
            assert f'password: "{password}"' in (a / "nats.conf").read_text()

        # A second start keeps the sealed keys (no re-provisioning) and renders the same.
        sealed = (tmp_path / "gateway/identity.sealed").read_bytes()
        second = _enrol(tmp_path, bin_dir, templates)
        assert second.returncode == 0, second.stderr
        assert "already provisioned" in second.stderr
        assert (tmp_path / "gateway/identity.sealed").read_bytes() == sealed
        assert load_party(tmp_path / "config/cluster0.yaml").gateways == {"gw-demo": gateway_key}
        assert [(a / "nats.password").read_text() for a in auth] == passwords  # kept

        # The sealed keys really open in this TPM: the gateway's own status command unseals
        # (through the measured launcher, as the container starts the agent).
        cfg = tmp_path / "config/gateway.yaml"
        status = subprocess.run(
            [bin_dir / "tecc-gateway", "launch", "--config", cfg, "status"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert gateway_key in status.stdout


def test_enrol_fails_clearly_without_a_tpm(tmp_path: Path) -> None:
    """With no TPM reachable the one-shot job fails, so nothing downstream starts."""
    templates = _templates(tmp_path, "swtpm:host=127.0.0.1,port=1")
    result = _enrol(tmp_path, _bin_dir(tmp_path), templates)
    assert result.returncode != 0
    assert "TPM" in result.stderr
    assert not (tmp_path / "config/cluster0.yaml").exists()
