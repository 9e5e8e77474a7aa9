"""The services themselves exit 2 with the same message as ``check-config`` on a bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .kinds import BY_NAME, at, edit


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_gateway_missing_password_file_exits_2(tmp_path: Path) -> None:
    """A missing ``password_file`` is a config error naming the key, not a traceback.

    Fails on the code before this change (raw FileNotFoundError traceback, exit 1).
    """
    kind = BY_NAME["gateway"]
    key = ("sources", "mqtt", 0, "password_file")
    path = kind.write(tmp_path, edit(kind.document(), key, "secrets/absent"))
    for command in ("run", "status", "provision"):
        done = _run(["gateway", command, "--config", str(path)])
        assert done.returncode == 2, done.stderr
        assert f"{at(key)}: cannot read" in done.stderr
        assert "Traceback" not in done.stderr
    check = _run(["gateway", "check-config", str(path)])
    assert check.returncode == 2
    assert f"{at(key)}: cannot read" in check.stderr


def test_gateway_reads_an_existing_password_file(tmp_path: Path) -> None:
    """The same key with the file present passes, so the test above can fail."""
    kind = BY_NAME["gateway"]
    (tmp_path / "pw").write_text("s3cret\n")
    path = kind.write(
        tmp_path, edit(kind.document(), ("sources", "mqtt", 0, "password_file"), "pw")
    )
    from gateway.config_yaml import load_config  # noqa: PLC0415 - next to its use

    assert load_config(path).mqtt[0].password == "s3cret"


@pytest.mark.parametrize(
    ("kind_name", "argv"),
    [
        ("party", ["cloud_tecc", "party", "--config"]),
        ("dealer", ["cloud_tecc", "dealer", "--config"]),
        ("output", ["cloud_tecc", "output", "--config"]),
        ("sim", ["firmware_sim", "run", "--quiet", "--config"]),
    ],
)
def test_service_start_on_a_bad_file_exits_2(
    tmp_path: Path, kind_name: str, argv: list[str]
) -> None:
    """Starting a service on a file with ``port: true`` exits 2 naming the key."""
    kind = BY_NAME[kind_name]
    path = kind.write(tmp_path, edit(kind.document(), kind.number_key, True))
    done = _run([*argv, str(path)])
    assert done.returncode == 2, done.stderr
    assert f"{path}: {at(kind.number_key)}: Expected" in done.stderr
    assert "Traceback" not in done.stderr
