"""A party's ``dealer:``: one endpoint (as before) or the shard's list of dealers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_tecc.cli import party_claims
from cloud_tecc.config import load_party
from cloud_tecc.errors import CloudConfigError

from .kinds import ROOT


def _ep(sid: str, port: int, mpc: bool = True) -> dict[str, Any]:
    ep: dict[str, Any] = {"service_id": sid, "url": f"http://127.0.0.1:{port}"}
    if mpc:
        ep["mpc"] = f"127.0.0.1:{port + 1}"
    return ep


def _write(tmp_path: Path, dealer: object) -> Path:
    doc = yaml.safe_load((ROOT / "configs" / "cluster0.yaml").read_text())
    shutil.copyfile(ROOT / "configs" / "policy.yaml", tmp_path / "policy.yaml")
    path = tmp_path / "cluster0.yaml"
    path.write_text(yaml.safe_dump({**doc, "dealer": dealer}))
    return path


def test_one_dealer_or_a_list(tmp_path: Path) -> None:
    """The single form still loads (a list of one); a list keeps its order."""
    one = load_party(ROOT / "configs" / "cluster0.yaml")
    assert [ep.service_id for ep in one.dealers] == ["dealer"]
    assert one.dealer == one.dealers[0]
    many = load_party(_write(tmp_path, [_ep("dealer", 8720), _ep("dealer2", 8722)]))
    assert [ep.service_id for ep in many.dealers] == ["dealer", "dealer2"]
    assert many.dealers[1].mpc_address == ("127.0.0.1", 8723)
    assert many.dealer.service_id == "dealer"
    # the quote's config claim names the standbys too; one dealer's claim is unchanged
    assert party_claims(many)["dealers"] == ["dealer", "dealer2"]
    assert "dealers" not in party_claims(one)
    assert party_claims(one)["dealer"] == "dealer"


@pytest.mark.parametrize(
    ("dealer", "message"),
    [
        ([], r"\$\.dealer: Expected `array` of length >= 1"),
        ([_ep(f"d{i}", 8000 + 2 * i) for i in range(9)], r"\$\.dealer: .*length <= 8"),
        ([_ep("dealer", 8720), _ep("dealer2", 8722, mpc=False)], r"dealer\[1\] needs mpc"),
        (_ep("dealer", 8720, mpc=False), r"\$: dealer needs mpc"),
        (
            [_ep("dealer", 8720), _ep("dealer", 8722)],
            r"dealer\[1\]\.service_id 'dealer' repeats dealer\[0\]'s: every dealer is its own "
            r"attested trust domain",
        ),
        ([_ep("dealer", 8720), {"service_id": "d2", "url": 5}], r"\$\.dealer\[1\]\.url"),
    ],
)
def test_refusals_name_the_key(tmp_path: Path, dealer: object, message: str) -> None:
    """An empty or too long list, a dealer without mpc, a repeated service id: refused."""
    with pytest.raises(CloudConfigError, match=message):
        load_party(_write(tmp_path, dealer))
