"""The launch measurement's configuration part covers each sensor's scale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.config_yaml import load_config
from gateway.launch import config_digest
from tests.gateway.harness import write_config
from tests.gateway.receiver import Platform


@dataclass(frozen=True)
class _Ref:
    index: int
    url: str
    service_id: str


def test_changing_only_scale_range_changes_the_measurement(tmp_path: Path) -> None:
    """Same sensors and ranges, another ``scale_range``: another measurement (fails on the
    code before this change: only id, low and high were measured)."""
    refs = [_Ref(i, f"http://127.0.0.1:{8701 + i}", f"party{i}") for i in range(2)]
    path = write_config(tmp_path, clusters=refs, platform=Platform())
    before = load_config(path)
    doc = yaml.safe_load(path.read_text())
    doc["sensors"][0]["scale_range"] = [-500.0, 500.0]
    path.write_text(yaml.safe_dump(doc))
    after = load_config(path)
    sid = doc["sensors"][0]["id"]
    assert after.sensors[sid].range == before.sensors[sid].range
    assert after.scales()[sid] != before.scales()[sid]
    assert config_digest(after) != config_digest(before)
    assert config_digest(load_config(path)) == config_digest(after)  # and it is stable
