"""``shards`` / ``shard`` in party and dealer files: bounds, and errors that name the key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_tecc.config import load_dealer, load_party
from cloud_tecc.errors import CloudConfigError

from .kinds import ROOT


def _write(tmp_path: Path, name: str, extra: dict[str, Any]) -> Path:
    doc = yaml.safe_load((ROOT / "configs" / name).read_text())
    shutil.copyfile(ROOT / "configs" / "policy.yaml", tmp_path / "policy.yaml")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**doc, **extra}))
    return path


@pytest.mark.parametrize("name", ["cluster0.yaml", "dealer.yaml"])
def test_shard_keys(tmp_path: Path, name: str) -> None:
    """Defaults 1/0; 0 <= shard < shards <= 64; each refusal names its key."""
    load = load_party if name.startswith("cluster") else load_dealer
    cases: list[tuple[dict[str, Any], str]] = [
        ({"shards": 2, "shard": 2}, r"shard 2 is not below shards 2: write a shard index 0\.\.1"),
        ({"shards": 65}, r"\$\.shards: .*<= 64"),
        ({"shards": 0}, r"\$\.shards: .*>= 1"),
        ({"shard": -1}, r"\$\.shard: .*>= 0"),
        ({"shard": True}, r"\$\.shard:"),
    ]
    for extra, message in cases:
        with pytest.raises(CloudConfigError, match=message):
            load(_write(tmp_path, name, extra))
    cfg = load(_write(tmp_path, name, {"shards": 64, "shard": 63}))
    assert (cfg.shards, cfg.shard) == (64, 63)
    default = load(ROOT / "configs" / name)
    assert (default.shards, default.shard) == (1, 0)
