"""Every config file kind: a valid document, its ``check-config`` command and its mistakes.

A :class:`Kind` writes a valid file of its kind into a folder (from the shipped
example where there is one) and names, for the matrix in
``test_check_config.py``, an integer key to break, a required key to drop and
a section to add an unknown key to.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT: Final = Path(__file__).resolve().parents[2]
CONFIGS: Final = ROOT / "configs"

Key = tuple[str | int, ...]


def _example(name: str) -> Callable[[], Any]:
    return lambda: yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))


def _mesh() -> dict[str, Any]:
    def ep(port: int) -> dict[str, Any]:
        key = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
        return {"host": "127.0.0.1", "port": port, "public_key": key}

    return {"n": 2, "frac_bits": 16, "parties": [ep(9001), ep(9002)], "dealer": ep(9003)}


@dataclass(frozen=True)
class Kind:
    """One config file kind and the keys its mistakes are made at."""

    name: str
    command: tuple[str, ...]  # python -m <...> check-config [flags]; FILE is appended
    document: Callable[[], Any]
    suffix: str
    number_key: Key  # a number key with bounds (an integer where the kind has one)
    out_of_range: int
    required: Key
    section: Key  # a mapping that gets an unknown key

    def write(self, folder: Path, doc: Any, name: str = "") -> Path:
        """Write ``doc`` (with the policy it names, for cluster files) into ``folder``."""
        (folder / "policy.yaml").write_text((CONFIGS / "policy.yaml").read_text())
        path = folder / f"{name or self.name}{self.suffix}"
        text = json.dumps(doc) if self.suffix == ".json" else yaml.safe_dump(doc)
        path.write_text(text, encoding="utf-8")
        return path

    def argv(self, path: Path) -> list[str]:
        """The ``check-config`` command line for ``path``."""
        return [sys.executable, "-m", self.command[0], "check-config", *self.command[1:], str(path)]


def at(key: Key) -> str:
    """The schema's path notation of ``key``: ``$.sources.mqtt[0].port``."""
    out = "$"
    for k in key:
        out += f"[{k}]" if isinstance(k, int) else f".{k}"
    return out


def edit(doc: Any, key: Key, value: Any = None, *, delete: bool = False) -> Any:
    """A copy of ``doc`` with ``key`` set to ``value`` (or deleted)."""
    out = copy.deepcopy(doc)
    node = out
    for k in key[:-1]:
        node = node[k]
    if delete:
        del node[key[-1]]
    else:
        node[key[-1]] = value
    return out


KINDS: Final = (
    Kind("gateway", ("gateway",), _example("gateway.yaml"), ".yaml",
         ("sources", "mqtt", 0, "port"), 70_000, ("gateway_id",), ("http",)),
    Kind("party", ("cloud_tecc",), _example("cluster0.yaml"), ".yaml",
         ("listen", "port"), 70_000, ("party",), ()),
    Kind("dealer", ("cloud_tecc",), _example("dealer.yaml"), ".yaml",
         ("depth",), 0, ("parties",), ("attestation",)),
    Kind("output", ("cloud_tecc",), _example("output.yaml"), ".yaml",
         ("listen", "port"), -1, ("service_id",), ("listen",)),
    Kind("policy", ("cloud_tecc", "--kind", "policy"), _example("policy.yaml"), ".yaml",
         ("min_count",), 0, ("limits", 0, "high"), ("zscore",)),
    Kind("mesh", ("cloud_tecc",), _mesh, ".json",
         ("parties", 1, "port"), 0, ("dealer",), ("parties", 0)),
    Kind("sim", ("firmware_sim",), _example("sim.yaml"), ".yaml",
         ("mqtt", "port"), 65_536, ("seed",), ("machines", 1, "sensors", 2)),
    Kind("scenario", ("firmware_sim", "--scenario"), _example("scenarios/sensor-faults.yaml"),
         ".yaml", ("anomalies", 0, "start_s"), -5, ("anomalies", 1, "kind"), ("anomalies", 3)),
)  # fmt: skip

BY_NAME: Final = {k.name: k for k in KINDS}
