"""swtpm instances manufactured with an EK certificate by a local simulated manufacturer CA.

``swtpm_setup --create-ek-cert`` creates the RSA-2048 EK and has
``swtpm_localca`` sign its certificate (the CA's root and intermediate are
created in ``ca_dir`` on first use), as a TPM vendor does at the factory.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.gateway.services import Swtpm, swtpm


def local_ca(ca_dir: Path) -> Path:
    """Write a swtpm_setup config whose manufacturer CA lives in ``ca_dir``; returns it."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    conf = ca_dir / "localca.conf"
    conf.write_text(
        f"statedir = {ca_dir}\nsigningkey = {ca_dir}/signkey.pem\n"
        f"issuercert = {ca_dir}/issuercert.pem\ncertserial = {ca_dir}/certserial\n",
        encoding="utf-8",
    )
    opts = ca_dir / "localca.options"
    opts.write_text(
        "--platform-manufacturer tecc\n--platform-version 2.1\n--platform-model gateway\n",
        encoding="utf-8",
    )
    setup = ca_dir / "setup.conf"
    setup.write_text(
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {conf}\ncreate_certs_tool_options = {opts}\n"
        "active_pcr_banks = sha256\n",
        encoding="utf-8",
    )
    return setup


def ca_bundle(ca_dir: Path) -> bytes:
    """The manufacturer's CA certificates (intermediate + root) as one PEM bundle."""
    return (ca_dir / "issuercert.pem").read_bytes() + (
        ca_dir / "swtpm-localca-rootca-cert.pem"
    ).read_bytes()


def manufacture(state: Path, ca_dir: Path) -> None:
    """Create a TPM state in ``state`` with an EK certificate from the CA in ``ca_dir``."""
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "swtpm_setup",
            "--tpm2",
            "--tpmstate",
            str(state),
            "--create-ek-cert",
            "--config",
            str(local_ca(ca_dir)),
            "--overwrite",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextlib.contextmanager
def manufactured_swtpm(state: Path, ca_dir: Path) -> Iterator[Swtpm]:
    """A running swtpm whose EK is certified by the CA in ``ca_dir``."""
    manufacture(state, ca_dir)
    with swtpm(state) as sw:
        yield sw
