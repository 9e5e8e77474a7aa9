"""The import graph of the product packages (docs/ARCHITECTURE.md, "Components").

Read from the source with :mod:`ast` (no module is imported), so a test run
cannot hide an import behind a guard: the product packages never import the
development deployment (``demo.devstack``), the demo, the benchmarks or the
tests; the gateway and the cloud never import each other; the contract
imports neither side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("cloud_tecc", "gateway", "tecc_contract", "firmware_sim")
DEV = ("demo", "bench", "tests", "fuzzing")
#: package -> top-level packages it must not import (beyond DEV).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "cloud_tecc": ("gateway", "firmware_sim"),
    "gateway": ("cloud_tecc", "firmware_sim"),
    "tecc_contract": ("cloud_tecc", "gateway", "firmware_sim"),
    "firmware_sim": ("cloud_tecc", "gateway"),
}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of the modules a source file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(root).with_suffix("").parts[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                out.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                out.add(node.module)
    return out


def _violations(package: str, root: Path = ROOT) -> list[str]:
    banned = (*DEV, *FORBIDDEN[package])
    return [
        f"{path.relative_to(root)} imports {name}"
        for path in sorted((root / package).rglob("*.py"))
        for name in sorted(imported_modules(path, root))
        if name.split(".")[0] in banned
    ]


@pytest.mark.parametrize("package", PRODUCT)
def test_product_packages_do_not_import_dev_code_or_the_other_side(package: str) -> None:
    """No product module imports demo/devstack, bench, tests or the other side of the contract."""
    assert _violations(package) == []


def test_the_check_sees_an_import_of_the_dev_deployment(tmp_path: Path) -> None:
    """The parser finds absolute, ``from`` and relative imports (so the test above can fail)."""
    (tmp_path / "cloud_tecc" / "party").mkdir(parents=True)
    sample = tmp_path / "cloud_tecc" / "party" / "sample.py"
    sample.write_text(
        "import demo.devstack.deployment\n"
        "from demo.devstack import shards\n"
        "from ..output import store\n"
        "from . import coordinator\n",
        encoding="utf-8",
    )
    assert imported_modules(sample, tmp_path) == {
        "demo.devstack.deployment",
        "demo.devstack",
        "cloud_tecc.output",
        "cloud_tecc.party",
    }
    assert _violations("cloud_tecc", tmp_path) == [
        "cloud_tecc/party/sample.py imports demo.devstack",
        "cloud_tecc/party/sample.py imports demo.devstack.deployment",
    ]


#: cloud_tecc modules the service command does not import, on purpose: the plaintext
#: reference of the analytics (the oracle of the tests and benchmarks, docs/MPC.md).
NOT_SERVED = frozenset({"cloud_tecc.analytics.reference"})


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _reachable(start: str, modules: dict[str, Path]) -> set[str]:
    """Modules of ``modules`` that ``start`` imports, transitively (``from p import m`` too)."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        name = stack.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        tree = ast.parse(modules[name].read_text(encoding="utf-8"))
        for imp in imported_modules(modules[name]):
            parts = imp.split(".")
            stack.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                stack.extend(f"{node.module}.{a.name}" for a in node.names)
    return seen


def test_every_measured_cloud_module_is_part_of_the_services() -> None:
    """The measured bundle holds what ``python -m cloud_tecc`` runs, no dev deployment.

    Fails on the code before this change: ``cloud_tecc/localstack.py`` and
    ``cloud_tecc/localshards.py`` (the development deployment, now
    ``demo/devstack/``) were in the bundle and imported by no service.
    """
    modules = _modules("cloud_tecc")
    served = _reachable("cloud_tecc.__main__", modules) | _reachable("cloud_tecc.cli", modules)
    assert set(modules) - served == NOT_SERVED
