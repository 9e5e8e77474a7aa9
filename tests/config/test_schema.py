"""The shared loader (tecc_contract.schema): strict conversion and errors that name the path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import pytest
from msgspec import Meta

from tecc_contract.errors import ConfigFileError
from tecc_contract.schema import FileSchema, Finite, Port, load_file


class Inner(FileSchema, frozen=True, kw_only=True):
    """A nested section."""

    low: Finite
    high: Finite = 1.0

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError("low must be < high")


class Doc(FileSchema, frozen=True, kw_only=True):
    """A small file kind."""

    port: Port = 80
    ratio: Annotated[float, Meta(ge=0, le=1)] = 0.5
    items: tuple[Inner, ...] = ()
    flag: bool = False
    ports: dict[str, Port] = msgspec.field(default_factory=dict)
    peers: dict[int, Inner] = msgspec.field(default_factory=dict)


def _load(tmp_path: Path, text: str, name: str = "f.yaml") -> Doc:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_file(path, Doc, error=ConfigFileError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: true\n", "$.port: Expected `int`, got `bool`; write a whole number >= 1"),
        ('port: "80"\n', "$.port: Expected `int`, got `str`"),
        ("port: 0\n", "$.port: Expected `int` >= 1"),
        ("prot: 8080\n", "$.prot: unknown key; did you mean `port`?"),
        ("items: [{low: 1, hihg: 2}]\n", "$.items[0].hihg: unknown key; did you mean `high`?"),
        ("items: [{high: 2}]\n", "$.items[0].low: required key is missing; add `low:`"),
        ("items: [{low: 3, high: 2}]\n", "$.items[0]: low must be < high"),
        (
            "items: [{low: .nan}]\n",
            "$.items[0].low: Expected `float` >= -1e+300; write a finite number",
        ),
        ("ratio: 1.5\n", "$.ratio: Expected `float` <= 1.0; write a finite number >= 0 and <= 1"),
        ("flag: 1\n", "$.flag: Expected `bool`, got `int`; write true or false"),
        ("ports: {a: 1, b.c: true}\n", "$.ports['b.c']: Expected `int`, got `bool`"),
        ("ports: {a: 1, b_c: 0}\n", "$.ports.b_c: Expected `int` >= 1"),
        ("peers: {0: {low: 0}, 3: {low: 0, x: 1}}\n", "$.peers[3].x: unknown key"),
        ("port: 1\nport: 2\n", "line 2, column 1: key 'port' is given twice"),
        ("? [1, 2]\n: x\n", "a key must be a plain name or number"),
        ("port: [1\n", "not valid YAML: line 2"),
        ("- 1\n", "$: Expected `object`, got `array`; write a mapping with keys port"),
    ],
)
def test_errors_name_the_path_and_what_to_write(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake raises the caller's error class with the file and the key's path."""
    with pytest.raises(ConfigFileError) as info:
        _load(tmp_path, text)
    assert str(info.value).startswith(str(tmp_path / "f.yaml") + ": ")
    assert message in str(info.value)


def test_valid_file_converts_with_defaults(tmp_path: Path) -> None:
    """Omitted keys take the Struct defaults; ints are accepted where a number belongs."""
    doc = _load(tmp_path, "items: [{low: 0}]\nratio: 1\n")
    assert doc == Doc(port=80, ratio=1.0, items=(Inner(low=0.0, high=1.0),), flag=False, ports={})
    assert _load(tmp_path, "") == Doc()


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    """A missing file, non-UTF-8 bytes and bad JSON are config errors, not tracebacks."""
    with pytest.raises(ConfigFileError, match="cannot read the file"):
        load_file(tmp_path / "absent.yaml", Doc, error=ConfigFileError)
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        load_file(tmp_path / "b.yaml", Doc, error=ConfigFileError)
    with pytest.raises(ConfigFileError, match="not valid YAML/JSON"):
        _load(tmp_path, "{", name="m.json")
