"""Every shipped example config passes ``check-config``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .kinds import CONFIGS, ROOT

DOCKER = ROOT / "docker" / "configs"
EXAMPLES = sorted(CONFIGS.rglob("*.yaml")) + sorted(DOCKER.glob("*.yaml"))


def _command(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "role" in doc:
        return ["cloud_tecc", "check-config"]
    if "gateway_id" in doc:
        return ["gateway", "check-config"]
    if "machines" in doc:
        return ["firmware_sim", "check-config"]
    if set(doc) == {"anomalies"}:
        return ["firmware_sim", "check-config", "--scenario"]
    return ["cloud_tecc", "check-config", "--kind", "policy"]


def test_examples_cover_every_yaml_kind() -> None:
    """The list below is not empty and holds every kind of shipped YAML file."""
    kinds = {" ".join(_command(p)) for p in EXAMPLES}
    assert len(kinds) == 5, kinds
    assert len(EXAMPLES) >= 12  # the docker templates are rendered and loaded in tests/docker


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_passes_check_config(tmp_path: Path, path: Path) -> None:
    """Exit 0 and one summary line; docker files read the policy from configs/."""
    if path.parent == DOCKER:
        # In the image the policy is mounted at /etc/tecc/policy.yaml (docker/compose.yaml).
        text = path.read_text().replace("/etc/tecc/policy.yaml", str(CONFIGS / "policy.yaml"))
        path = tmp_path / path.name
        path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", *_command(path), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert ": valid " in done.stdout
