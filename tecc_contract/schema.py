"""The one loader for every config file: YAML or JSON -> a frozen msgspec ``Struct``.

Each package declares its file kinds as :class:`FileSchema` subclasses
(``frozen``, ``forbid_unknown_fields``, ``kw_only``; bounds in
``Annotated[..., Meta(...)]``; cross-field rules in ``__post_init__``, which
raise :class:`ValueError`). :func:`load_file` parses a file and converts it
with ``msgspec.convert(strict=True)``: unknown keys are errors, ``true`` is
not an integer and ``"80"`` is not a number. A failure becomes one line that
names the file, the key's path (``$.sensors[2].range``) and what to write
instead, raised as the caller's own config-error class.

Defaults live in exactly one place: the field defaults of the Structs.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect as mi
import yaml

from tecc_contract.errors import ConfigFileError

S = TypeVar("S", bound=msgspec.Struct)
E = TypeVar("E", bound=ConfigFileError)

#: A port number.
Port = Annotated[int, msgspec.Meta(ge=1, le=65535, description="TCP port 1..65535")]
#: A listen port; 0 lets the OS choose one.
ListenPort = Annotated[int, msgspec.Meta(ge=0, le=65535, description="TCP port, 0 = any free")]
#: A non-empty string.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
#: 32 bytes in hex (an Ed25519 public key, a SHA-256 digest).
Hex32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$")]
#: An http(s) base URL.
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")]
#: ``host:port`` of a socket.
HostPort = Annotated[str, msgspec.Meta(pattern=r"^[^\s:]+(:[^\s:]+)*:[0-9]{1,5}$")]
#: A count of at least one.
Count = Annotated[int, msgspec.Meta(ge=1)]
#: A finite number (NaN and infinities are refused through the bounds).
Finite = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
#: A finite number >= 0.
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e300)]
#: A finite number > 0.
Positive = Annotated[float, msgspec.Meta(gt=0, le=1e300)]


class FileSchema(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=False
):
    """Base of every config-file Struct: frozen, keyword-only, unknown keys refused."""


def is_loopback_host(host: str) -> bool:
    """True if ``host`` (a name or an address, IPv6 with or without brackets) is this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def finite(value: float, what: str) -> float:
    """``value`` if finite; ValueError naming ``what`` otherwise."""
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[object, object]:
    loader.flatten_mapping(node)
    out: dict[object, object] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool | None):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain name or number", key_node.start_mark
            )
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice; keep one", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_document(path: Path) -> object:
    """Parse ``path`` as YAML (JSON is YAML too); ConfigFileError when it cannot."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigFileError(f"{path}: not valid YAML: {where}{exc.problem or exc}") from exc
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigFileError(f"{path}: not valid YAML/JSON: {exc}") from exc


def convert(raw: object, schema: type[S], *, source: str, error: type[E]) -> S:
    """``msgspec.convert(raw, schema, strict=True)``; ``error(message)`` naming the path."""
    if raw is None:
        raw = {}
    try:
        return msgspec.convert(raw, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise error(f"{source}: {explain(str(exc), schema, raw)}") from exc


def load_file(path: Path, schema: type[S], *, error: type[E]) -> S:
    """Read and convert one config file; every failure raises ``error`` (a ConfigFileError)."""
    try:
        raw = read_document(path)
    except ConfigFileError as exc:
        raise error(str(exc)) from exc
    return convert(raw, schema, source=str(path), error=error)


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|'[^']*'|[^\]]*)\]")


def explain(message: str, schema: type[Any], raw: object) -> str:
    """Turn a msgspec validation message into ``$.path: reason; write ...``."""
    m = _AT.match(message)
    msg, path = (m.group("msg"), m.group("path") or "$") if m else (message, "$")
    path = _name_keys(path, message, schema, raw)
    node = _type_at(mi.type_info(schema), path)
    if u := _UNKNOWN.match(msg):
        key = u.group("key")
        known = _fields(node)
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean `{near[0]}`? " if near else ""
        allowed = ", ".join(known) or "none"
        return f"{path}.{key}: unknown key; {hint}allowed keys here: {allowed}"
    if k := _MISSING.match(msg):
        key = k.group("key")
        field = _type_at(node, f"$.{key}") if node is not None else None
        return f"{path}.{key}: required key is missing; add `{key}:` with {describe(field)}"
    if msg.startswith(("Expected", "Invalid enum value")):
        return f"{path}: {msg}; write {describe(node)}"
    return f"{path}: {msg}"


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _steps(path: str) -> list[str | int]:
    out: list[str | int] = []
    for name, index in _STEP.findall(path[1:]):
        if name:
            out.append(name)
        elif index.isdigit():
            out.append(int(index))
        else:
            out.append(index.strip("'"))
    return out


def _key_step(key: object) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    text = str(key)
    return f".{text}" if _PLAIN_KEY.match(text) else f"['{text}']"


def _name_keys(path: str, message: str, schema: type[Any], raw: object) -> str:
    """Replace msgspec's ``[...]`` (a mapping key it does not print) by the offending key.

    Each candidate key is tried alone: the key whose value alone reproduces the
    same validation message is the one to name.
    """
    doc = raw
    while "[...]" in path:
        head, _, tail = path.partition("[...]")
        node: Any = doc
        for step in _steps(head):
            if isinstance(node, dict):
                node = node.get(step)
            elif isinstance(node, list) and isinstance(step, int) and step < len(node):
                node = node[step]
            else:
                return path
        if not isinstance(node, dict):
            return path
        found = None
        entries = dict(node)
        for key, value in entries.items():
            node.clear()
            node[key] = value
            try:
                msgspec.convert(doc, schema, strict=True)
            except msgspec.ValidationError as exc:
                found = key if str(exc) == message else None
            finally:
                node.clear()
                node.update(entries)
            if found is not None:
                break
        if found is None:
            return path
        path = head + _key_step(found) + tail
    return path


def _fields(node: mi.Type | None) -> list[str]:
    node = _unwrap(node)
    if isinstance(node, mi.StructType):
        return [f.encode_name for f in node.fields]
    return []


def _unwrap(node: mi.Type | None) -> mi.Type | None:
    while isinstance(node, mi.Metadata):
        node = node.type
    if isinstance(node, mi.UnionType):
        rest = [t for t in node.types if not isinstance(t, mi.NoneType)]
        return rest[0] if len(rest) == 1 else node
    return node


def _type_at(node: mi.Type | None, path: str) -> mi.Type | None:
    for name, index in _STEP.findall(path[1:] if path.startswith("$") else path):
        node = _unwrap(node)
        if isinstance(node, mi.StructType) and name:
            node = next((f.type for f in node.fields if f.encode_name == name), None)
        elif isinstance(node, mi.DictType):
            node = node.value_type
        elif isinstance(node, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
            node = node.item_type
        elif (
            isinstance(node, mi.TupleType) and index.isdigit() and int(index) < len(node.item_types)
        ):
            node = node.item_types[int(index)]
        else:
            return None
    return node


def _bounds(node: mi.IntType | mi.FloatType) -> str:
    parts = [
        f"{op} {v:g}"
        for op, v in ((">=", node.ge), (">", node.gt), ("<=", node.le), ("<", node.lt))
        if v is not None and abs(v) < 1e299
    ]
    return f" {' and '.join(parts)}" if parts else ""


_DESCRIBERS: dict[type[Any], Callable[[Any], str]] = {
    mi.BoolType: lambda _: "true or false",
    mi.StrType: lambda t: (
        f"a string matching {t.pattern}"
        if t.pattern
        else "a string" + (" (not empty)" if t.min_length else "")
    ),
    mi.IntType: lambda t: f"a whole number{_bounds(t)}, unquoted (not true/false)",
    mi.FloatType: lambda t: f"a finite number{_bounds(t)}, unquoted",
    mi.EnumType: lambda t: "one of " + ", ".join(str(m.value) for m in t.cls),
    mi.LiteralType: lambda t: "one of " + ", ".join(str(v) for v in t.values),
    mi.NoneType: lambda _: "null",
    mi.StructType: lambda t: "a mapping with keys " + ", ".join(_fields(t)),
    mi.DictType: lambda t: f"a mapping whose values are {describe(t.value_type)}",
    mi.ListType: lambda t: f"a list of {describe(t.item_type)}",
    mi.VarTupleType: lambda t: f"a list of {describe(t.item_type)}",
    mi.FrozenSetType: lambda t: f"a list of {describe(t.item_type)}",
    mi.TupleType: lambda t: (
        f"a list of {len(t.item_types)} items "
        + "["
        + ", ".join(describe(x) for x in t.item_types)
        + "]"
    ),
    mi.UnionType: lambda t: " or ".join(describe(x) for x in t.types),
}


def describe(node: mi.Type | None) -> str:
    """What a value of type ``node`` looks like in YAML, for 'write ...' hints."""
    if node is None:
        return "a value of the documented type (docs/CONFIG.md)"
    node = _unwrap(node) if isinstance(node, mi.Metadata) else node
    fn = _DESCRIBERS.get(type(node))
    return fn(node) if fn is not None else "a value of the documented type (docs/CONFIG.md)"
