"""Fuzz config loading: gateway, party, dealer, output, policy, simulator and scenario files.

Seeds are the shipped ``configs/*.yaml``; cases are byte-level mutations of
the text and structural mutations of the parsed tree (a node replaced by a
value of another type, a key dropped or an unknown key added). Each loader
may raise only its own configuration error.

A case is ``<loader name> "\\n" <yaml text>``; the loader reads a real file.
"""

from __future__ import annotations

import atexit
import copy
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import yaml

import cloud_tecc.errors
import firmware_sim.errors
import gateway.errors
from cloud_tecc.config import load_dealer, load_output, load_party
from firmware_sim.config_yaml import load_config as load_sim
from firmware_sim.config_yaml import load_scenario
from fuzzing.harness import Target, mutate_bytes
from gateway.config_yaml import load_config as load_gateway

CONFIGS: Final = Path(__file__).resolve().parents[1] / "configs"
_DIR = Path(tempfile.mkdtemp(prefix="tecc-fuzz-config-"))
atexit.register(shutil.rmtree, _DIR, True)
_POLICY = (CONFIGS / "policy.yaml").read_text()


def _cloud(load: Callable[[Path], object]) -> Callable[[Path], object]:
    def run(path: Path) -> object:
        (_DIR / "policy.yaml").write_text(_POLICY)
        return load(path)

    return run


def _policy(path: Path) -> object:
    shutil.copyfile(path, _DIR / "policy.yaml")  # the party config below names policy.yaml
    party = _DIR / "party-for-policy.yaml"
    party.write_text((CONFIGS / "cluster0.yaml").read_text())
    return load_party(party)


_LOADERS: Final[dict[str, tuple[str, Callable[[Path], object], type[Exception]]]] = {
    "gateway": ("gateway.yaml", load_gateway, gateway.errors.GatewayConfigError),
    "party": ("party-case.yaml", _cloud(load_party), cloud_tecc.errors.CloudConfigError),
    "dealer": ("dealer.yaml", _cloud(load_dealer), cloud_tecc.errors.CloudConfigError),
    "output": ("output.yaml", _cloud(load_output), cloud_tecc.errors.CloudConfigError),
    "policy": ("policy-case.yaml", _policy, cloud_tecc.errors.CloudConfigError),
    "sim": ("sim.yaml", load_sim, firmware_sim.errors.SimConfigError),
    "scenario": ("scenario.yaml", load_scenario, firmware_sim.errors.SimConfigError),
}
_NAMES: Final = tuple(_LOADERS)
_ODD: Final[tuple[Any, ...]] = (
    None,
    True,
    0,
    -1,
    2**70,
    1e308,
    float("nan"),
    "",
    "x" * 300,
    "127.0.0.1:99999",
    [],
    [None],
    {},
    {"k": [1, {"z": None}]},
)


class _Refused(Exception):  # noqa: N818 - an allowed outcome, see run()
    """The loader refused the file with its own configuration error."""


def _split(data: bytes) -> tuple[str, bytes]:
    head, _, body = data.partition(b"\n")
    name = head.decode("ascii", "replace")
    return (name, body) if name in _LOADERS else (_NAMES[len(data) % len(_NAMES)], data)


def _tree_edit(node: Any, rng: random.Random) -> Any:
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        op = rng.random()
        if op < 0.15:
            del node[key]
        elif op < 0.25:
            node["unexpected_" + str(rng.randrange(9))] = rng.choice(_ODD)
        else:
            node[key] = _tree_edit(node[key], rng)
        return node
    if isinstance(node, list) and node and rng.random() < 0.8:
        i = rng.randrange(len(node))
        node[i] = _tree_edit(node[i], rng)
        return node
    return rng.choice(_ODD)


_TREES: dict[bytes, Any] = {}


def _parsed(body: bytes) -> Any:
    """A fresh copy of the parsed seed (parsing once per seed keeps the loop fast)."""
    if body not in _TREES:
        _TREES[body] = yaml.safe_load(body)
    return copy.deepcopy(_TREES[body])


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """Mutate the YAML part of a case: text edits or tree edits."""
    name, body = _split(seed)
    if rng.random() < 0.4:
        return name.encode() + b"\n" + mutate_bytes(body, rng)
    tree = _parsed(body)
    for _ in range(rng.randint(1, 3)):
        tree = _tree_edit(tree, rng)
    return name.encode() + b"\n" + yaml.safe_dump(tree).encode()


def run(data: bytes) -> None:
    """Write the YAML to a file and load it with the named loader."""
    name, body = _split(data)
    filename, load, error = _LOADERS[name]
    path = _DIR / filename
    path.write_bytes(body)
    try:
        load(path)
    except error as exc:
        if not str(exc):
            raise AssertionError(f"{name}: a configuration error must say what is wrong") from exc
        raise _Refused(name) from exc


_SOURCES: Final = {
    "policy": "policy.yaml",
    "party": "cluster0.yaml",
    "sim": "sim.yaml",
    "scenario": "scenarios/sensor-faults.yaml",
}
_SEEDS = [
    f"{n}\n".encode() + (CONFIGS / _SOURCES.get(n, f)).read_bytes()
    for n, (f, _, _) in _LOADERS.items()
]
TARGET = Target("config", _SEEDS, run, (_Refused,), mutate)
