"""docs/CONFIG.md is exactly what docs/gen_config.py renders from the Structs."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from .kinds import ROOT


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "docs" / "gen_config.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_md_matches_the_structs() -> None:
    """Regenerate with ``python docs/gen_config.py --write`` when this fails."""
    committed = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert committed == _generator().render()


def test_config_md_lists_every_kind_and_its_keys() -> None:
    """Every file kind has a section, and a key from each shows up in a table."""
    text = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    for heading in ("## Gateway", "## Cluster party", "## Dealer", "## Output service"):
        assert heading in text
    for heading in ("## Analytics policy", "## MPC mesh file", "## Simulator scenario"):
        assert heading in text
    for key in ("`password_file`", "`retention_s`", "`batch_readings`", "`value_bound_bits`"):
        assert key in text
    assert "| `frac_bits` | int (≥ 1, ≤ 32) | `16` |" in text
