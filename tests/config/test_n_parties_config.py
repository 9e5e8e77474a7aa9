"""Service configs for N >= 2 parties: what is accepted, and errors that say what to write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_tecc.config import load_dealer, load_output, load_party
from cloud_tecc.errors import CloudConfigError

from .kinds import CONFIGS


def _ep(i: int, mpc: bool = True) -> dict[str, str]:
    ep = {"service_id": f"party-{i}", "url": f"http://127.0.0.1:{8701 + i}"}
    if mpc:
        ep["mpc"] = f"127.0.0.1:{8711 + i}"
    return ep


def _write(tmp: Path, name: str, doc: dict[str, Any]) -> Path:
    (tmp / "policy.yaml").write_text((CONFIGS / "policy.yaml").read_text())
    path = tmp / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _party(party: int, n: int, peers: list[int]) -> dict[str, Any]:
    doc = yaml.safe_load((CONFIGS / "cluster0.yaml").read_text())
    doc.update(party=party, n_parties=n, peers={j: _ep(j) for j in peers})
    return dict(doc)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_party_of_n_loads(tmp_path: Path, n: int) -> None:
    """Each party 0..N-1 with every other party as a peer is a valid config."""
    for i in range(n):
        others = [j for j in range(n) if j != i]
        cfg = load_party(_write(tmp_path, f"p{i}.yaml", _party(i, n, others)))
        assert (cfg.party, cfg.n_parties, sorted(cfg.peers)) == (i, n, others)


@pytest.mark.parametrize(
    ("party", "n", "peers", "message"),
    [
        (0, 3, [1], r"peers must name every other party of the 3 .* write entries for \[1, 2\]"
         r"; missing \[2\]"),
        (1, 3, [0, 2, 3], r"write entries for \[0, 2\]; not another party here: \[3\]"),
        (3, 3, [0, 1, 2], r"party 3 is not below n_parties 3: write a party index 0\.\.2"),
        (0, 1, [], r"\$\.n_parties: .*>= 2"),
        (0, 17, [], r"\$\.n_parties: .*<= 16"),
    ],
)  # fmt: skip
def test_party_errors_name_the_key(
    tmp_path: Path, party: int, n: int, peers: list[int], message: str
) -> None:
    """A wrong party count, index or peer list is refused with what to write instead."""
    with pytest.raises(CloudConfigError, match=message):
        load_party(_write(tmp_path, "p.yaml", _party(party, n, peers)))


@pytest.mark.parametrize(("kind", "loader"), [("dealer", load_dealer), ("output", load_output)])
def test_dealer_and_output_take_n_parties(tmp_path: Path, kind: str, loader: Any) -> None:
    """Dealer and output list parties 0..N-1; a gap or a single party is refused."""
    doc = yaml.safe_load((CONFIGS / f"{kind}.yaml").read_text())
    mpc = kind == "dealer"
    doc["parties"] = {i: _ep(i, mpc) for i in range(3)}
    assert sorted(loader(_write(tmp_path, f"{kind}.yaml", doc)).parties) == [0, 1, 2]
    for bad in ({0: _ep(0, mpc), 2: _ep(2, mpc)}, {0: _ep(0, mpc)}):
        doc["parties"] = bad
        with pytest.raises(CloudConfigError, match=r"parties must name the parties 0\.\.N-1"):
            loader(_write(tmp_path, f"{kind}.yaml", doc))
