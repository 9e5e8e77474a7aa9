"""``check-config`` for every config file kind: exit 0 + summary, or exit 2 + path + reason.

Each kind (gateway, party, dealer, output, policy, mesh, simulator, scenario)
gets the same mistakes: an unknown key, ``true`` and ``"80"`` where a number
belongs, a number out of range and a missing required key. Each must exit 2
with the key's path in the message; the file without the mistake exits 0.
The real command runs as a subprocess once per kind; the matrix calls the
same ``main`` in-process to stay fast.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cloud_tecc.cli
import firmware_sim.cli
import gateway.cli

from .kinds import BY_NAME, KINDS, Kind, at, edit

MAINS: dict[str, Callable[[list[str] | None], int]] = {
    "gateway": gateway.cli.main,
    "cloud_tecc": cloud_tecc.cli.main,
    "firmware_sim": firmware_sim.cli.main,
}


def _mistakes(kind: Kind) -> list[tuple[str, Any, str]]:
    doc = kind.document()
    unknown = edit(doc, (*kind.section, "retention"), 3600)
    return [
        ("unknown key", unknown, f"{at((*kind.section, 'retention'))}: unknown key"),
        ("bool for a number", edit(doc, kind.number_key, True), f"{at(kind.number_key)}: Expected"),
        (
            "string for a number",
            edit(doc, kind.number_key, "80"),
            f"{at(kind.number_key)}: Expected",
        ),
        (
            "out of range",
            edit(doc, kind.number_key, kind.out_of_range),
            f"{at(kind.number_key)}: Expected",
        ),
        (
            "missing required key",
            edit(doc, kind.required, delete=True),
            f"{at(kind.required)}: required key is missing",
        ),
    ]


CASES = [
    pytest.param(kind.name, what, doc, needle, id=f"{kind.name}-{what}")
    for kind in KINDS
    for what, doc, needle in _mistakes(kind)
]


def _check(kind: Kind, path: Path) -> int:
    return MAINS[kind.command[0]](kind.argv(path)[3:])


@pytest.mark.parametrize(("name", "what", "doc", "needle"), CASES)
def test_each_mistake_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, what: str, doc: Any, needle: str
) -> None:
    """The broken file exits 2 with its path and the key's path; the intact one exits 0."""
    kind = BY_NAME[name]
    bad = kind.write(tmp_path, doc, "bad")
    assert _check(kind, bad) == 2, what
    err = capsys.readouterr().err
    assert str(bad) in err
    assert needle in err, err
    good = kind.write(tmp_path, kind.document(), "good")
    assert _check(kind, good) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{good}: valid "), out
    assert out.count("\n") == 1, out


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_real_command_exit_codes(tmp_path: Path, kind: Kind) -> None:
    """``python -m <package> check-config FILE``: 0 + one line, or 2 + path + reason."""
    good = kind.write(tmp_path, kind.document(), "good")
    ok = subprocess.run(kind.argv(good), capture_output=True, text=True, timeout=120, check=False)
    assert (ok.returncode, ok.stdout.count("\n")) == (0, 1), ok.stderr
    bad = kind.write(tmp_path, edit(kind.document(), kind.number_key, True), "bad")
    no = subprocess.run(kind.argv(bad), capture_output=True, text=True, timeout=120, check=False)
    assert no.returncode == 2
    assert f"{bad}: {at(kind.number_key)}: Expected" in no.stderr
    assert "Traceback" not in no.stderr


def test_service_file_checks_the_policy_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A party file whose policy file is broken fails with both paths named."""
    kind = BY_NAME["party"]
    path = kind.write(tmp_path, edit(kind.document(), ("policy",), "broken.yaml"))
    (tmp_path / "broken.yaml").write_text("window_s: 10\nretention: 3600\n")
    assert _check(kind, path) == 2
    err = capsys.readouterr().err
    assert f"{path}: $.policy names an invalid analytics policy: " in err
    assert f"{tmp_path / 'broken.yaml'}: $.retention: unknown key" in err
    (tmp_path / "broken.yaml").write_text("window_s: 10\n")
    assert _check(kind, path) == 0
