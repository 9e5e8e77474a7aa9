"""Keys sealed in a real swtpm under a PCR policy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config_yaml import load_config
from gateway.errors import GatewayError, NotProvisionedError, PcrPolicyError
from gateway.keys import IDENTITY_FILE, PUBLIC_FILE, SPOOL_KEY_FILE, load_keys, provision
from gateway.launch import events, predicted
from gateway.tpm import Tpm
from tests.gateway.harness import ROOT, cli, write_config
from tests.gateway.receiver import FakeCluster, Platform
from tests.gateway.services import swtpm
from tests.gateway.tpm_link import recorded_link

pytestmark = pytest.mark.tpm


def test_provision_then_load_roundtrip(tmp_path: Path) -> None:
    """Provisioned keys unseal to the same material; only sealed blobs are on disk."""
    seeds = iter([b"\x11" * 32, b"\x22" * 32])
    with swtpm(tmp_path / "tpm") as sw, Tpm(sw.tcti) as tpm:
        made = provision(tpm, tmp_path / "st", [7, 14], random_bytes=lambda n: next(seeds))
        loaded = load_keys(tpm, tmp_path / "st")
        with pytest.raises(GatewayError, match="--force"):
            provision(tpm, tmp_path / "st", [7, 14])
    assert loaded.spool_key == made.spool_key == b"\x22" * 32
    assert loaded.public_raw == made.public_raw
    on_disk = b"".join(
        (tmp_path / "st" / f).read_bytes() for f in (IDENTITY_FILE, SPOOL_KEY_FILE, PUBLIC_FILE)
    )
    for secret in (b"\x11" * 32, b"\x22" * 32):
        assert secret not in on_disk
        assert secret.hex().encode() not in on_disk


def test_secrets_never_cross_the_tpm_link_in_clear(tmp_path: Path) -> None:
    """Seed and spool key cross the TSS↔TPM link only encrypted, at provisioning and unseal.

    A recording forwarder sits between the TSS and swtpm. Fails on the code
    before this change: unsalted sessions with a NULL symmetric sent both
    secrets in clear in TPM2_Create and got them back in clear from
    TPM2_Unseal.
    """
    seed, spool_key = b"\x5a\xc3" * 16, b"\x3c\xa5" * 16
    secrets = iter([seed, spool_key])
    with swtpm(tmp_path / "tpm") as sw, recorded_link(sw.port) as link:
        with Tpm(link.tcti) as tpm:
            provision(tpm, tmp_path / "st", [7, 14], random_bytes=lambda n: next(secrets))
        after_provision = link.data()
        with Tpm(link.tcti) as tpm:
            loaded = load_keys(tpm, tmp_path / "st")
        captured = link.data()
    assert loaded.spool_key == spool_key
    assert len(after_provision) > 1000
    assert len(captured) > len(after_provision)
    for secret in (seed, spool_key):
        for part in (secret[:8], secret[8:16], secret[16:24], secret[24:]):
            assert part not in captured


def test_extended_pcr_blocks_unseal(tmp_path: Path) -> None:
    """After a PCR in the policy is extended, unsealing fails with PcrPolicyError."""
    with swtpm(tmp_path / "tpm") as sw, Tpm(sw.tcti) as tpm:
        provision(tpm, tmp_path / "st", [7, 14])
        tpm.extend_pcr(14, hashlib.sha256(b"unexpected firmware").digest())
        with pytest.raises(PcrPolicyError, match="boot chain or firmware changed"):
            load_keys(tpm, tmp_path / "st")


def test_unrelated_pcr_does_not_matter(tmp_path: Path) -> None:
    """Extending a PCR outside the policy leaves the keys usable."""
    with swtpm(tmp_path / "tpm") as sw, Tpm(sw.tcti) as tpm:
        made = provision(tpm, tmp_path / "st", [7, 14])
        tpm.extend_pcr(16, hashlib.sha256(b"debug").digest())
        assert load_keys(tpm, tmp_path / "st").public_raw == made.public_raw


def test_not_provisioned_says_what_to_do(tmp_path: Path) -> None:
    """Starting without sealed keys names the provision command."""
    with (
        swtpm(tmp_path / "tpm") as sw,
        Tpm(sw.tcti) as tpm,
        pytest.raises(NotProvisionedError, match="gateway provision"),
    ):
        load_keys(tpm, tmp_path / "st")


@pytest.mark.processes
def test_cli_run_refuses_after_pcr_change(tmp_path: Path) -> None:
    """`launch` exits 3 with a message naming the PCRs and the real remedy command.

    Fails on the code before this change: the message named `gateway provision
    --force`; the command is `tecc-gateway`.
    """
    platform = Platform()
    clusters = [FakeCluster(i, 1 + i, platform, {}) for i in range(2)]
    with swtpm(tmp_path / "tpm") as sw:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, tcti=sw.tcti)
        prov = cli("provision", "--config", str(cfg))
        assert prov.returncode == 0, prov.stderr
        with Tpm(sw.tcti) as tpm:
            tpm.extend_pcr(14, hashlib.sha256(b"tampered bootloader").digest())
        run = cli("launch", "--config", str(cfg))
    assert run.returncode == 3
    assert "refusing to start" in run.stderr
    assert "PCRs 7,14" in run.stderr
    assert "`tecc-gateway provision --force`" in run.stderr


def _code_copy(tmp: Path, change: bool) -> Path:
    """A copy of the gateway's code bundle, with one agent file changed if ``change``."""
    dst = tmp / ("changed" if change else "same")
    for pkg in ("gateway", "tecc_contract"):
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    if change:
        agent = dst / "gateway" / "agent.py"
        agent.write_text(agent.read_text() + "\n# one changed line\n")
    return dst


def _launch(code: Path, cfg: Path, *then: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "launch", "--config", str(cfg), *then],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.processes
@pytest.mark.parametrize("change", [False, True])
def test_a_changed_agent_file_does_not_unseal(tmp_path: Path, change: bool) -> None:
    """Keys provisioned for this code unseal through `launch`; one changed agent file: exit 3.

    Fails on the code before this change: nothing measured the code, PCR 14
    stayed zero, and a modified agent unsealed both keys.
    """
    platform = Platform()
    clusters = [FakeCluster(i, 1 + i, platform, {}) for i in range(2)]
    code = _code_copy(tmp_path, change)
    with swtpm(tmp_path / "tpm") as sw:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, tcti=sw.tcti)
        prov = cli("provision", "--config", str(cfg))
        assert prov.returncode == 0, prov.stderr
        bare = cli("status", "--config", str(cfg))  # not through the launcher: PCR 14 is zero
        first = _launch(code, cfg, "status")
        again = _launch(code, cfg, "status")  # a restart: the PCR is not extended twice
        with Tpm(sw.tcti) as tpm:
            pcr14 = tpm.read_pcr(14)
    assert bare.returncode == 3
    assert "tecc-gateway launch" in bare.stderr
    if change:
        assert first.returncode == again.returncode == 3, first.stderr
        assert "`tecc-gateway provision --force`" in first.stderr
        assert "differ from what was provisioned" in first.stderr
    else:
        assert first.returncode == again.returncode == 0, first.stderr
        assert (
            json.loads(again.stdout)["identity_public_key"]
            == json.loads(prov.stdout)["identity_public_key"]
        )
        assert pcr14 == bytes.fromhex(json.loads(prov.stdout)["launch_measurement"])
        assert pcr14 == predicted(events(load_config(cfg)))  # this tree's code = the copy


@pytest.mark.processes
def test_cli_provision_status_and_reenrol(tmp_path: Path) -> None:
    """`provision` prints the identity key; `status` and `reenrol` unseal and report."""
    platform = Platform()
    clusters = [FakeCluster(i, 1 + i, platform, {}) for i in range(2)]
    with swtpm(tmp_path / "tpm") as sw:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, tcti=sw.tcti)
        prov = cli("provision", "--config", str(cfg))
        again = cli("provision", "--config", str(cfg))
        status = cli("launch", "--config", str(cfg), "status")
        reenrol = cli("launch", "--config", str(cfg), "reenrol", "--cluster", "1")
    assert prov.returncode == 0, prov.stderr
    key = json.loads(prov.stdout)["identity_public_key"]
    assert again.returncode == 4
    assert "--force" in again.stderr
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["identity_public_key"] == key
    assert json.loads(status.stdout)["last_seq"] > 1_700_000_000_000  # ms at creation
    assert json.loads(reenrol.stdout) == {"cluster": 1, "dropped_envelopes": 0}
    state = cfg.parent / "state"
    assert state.stat().st_mode & 0o777 == 0o700
    for f in state.iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f


@pytest.mark.processes
def test_launch_measures_the_security_relevant_config(tmp_path: Path) -> None:
    """A new allow-list entry makes unseal fail; new ports (a re-rendered config) do not.

    Fails on the code before this change: the config was not measured at all,
    so a config trusting another platform or measurement unsealed the keys.
    """
    platform = Platform()
    clusters = [FakeCluster(i, 1 + i, platform, {}) for i in range(2)]
    with swtpm(tmp_path / "tpm") as sw:
        cfg = write_config(tmp_path, clusters=clusters, platform=platform, tcti=sw.tcti)
        assert cli("provision", "--config", str(cfg)).returncode == 0
        doc = yaml.safe_load(cfg.read_text())
        doc["http"]["port"] += 1
        moved = tmp_path / "ports.yaml"
        moved.write_text(yaml.safe_dump(doc))
        same = cli("launch", "--config", str(moved), "status")
    with swtpm(tmp_path / "tpm") as sw:  # a TPM restart: PCR 14 is reset
        doc["attestation"]["allowed_measurements"].append("ab" * 32)
        doc["tpm"]["tcti"] = sw.tcti  # the restarted swtpm's port (not measured)
        widened = tmp_path / "widened.yaml"
        widened.write_text(yaml.safe_dump(doc))
        wider = cli("launch", "--config", str(widened), "status")
    assert same.returncode == 0, same.stderr
    assert wider.returncode == 3
    assert "differ from what was provisioned" in wider.stderr
