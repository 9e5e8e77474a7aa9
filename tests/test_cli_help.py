"""Every service's command line answers --help (console scripts and ``python -m``)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_help(script: str) -> None:
    """The installed console script exists and prints usage."""
    path = Path(sys.executable).parent / script
    assert path.exists(), f"{script} is not installed: run ./tecc setup (pip install -e .)"
    out = subprocess.run(
        [str(path), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout.lower()


@pytest.mark.parametrize("module", ["gateway", "cloud_tecc", "firmware_sim", "demo", "demo.replay"])
def test_module_help(module: str) -> None:
    """``python -m <package> --help`` prints usage."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout.lower()
