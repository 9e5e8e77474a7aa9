"""Columnar decoding of Sparkplug B DATA payloads straight from the protobuf wire bytes.

An edge node in its steady state publishes the same NDATA/DDATA message over
and over: the same metrics, in the same order, addressed by the same aliases,
encoded with the same field layout; only the payload timestamp, ``seq``, the
metric timestamps and the values change. :func:`compile_layout` scans one
payload (protobuf wire format, Sparkplug 3.0 §6.4) and describes it as a
:class:`Layout`: one ``struct`` format covering every byte of the payload, the
bytes that must be identical in every message of that shape (field tags,
lengths, aliases, names, datatypes, flags) and where the variable fields lie.
:meth:`Layout.unpack` then decodes a later payload of the same shape with one
``struct`` call: the fixed bytes are compared as one tuple, the varints are
checked to have the compiled width, and the values come out as columns. A
payload that differs in any fixed byte or varint width is not of the layout
(``None``) and the caller decodes it with the ``protobuf`` library instead.

What a payload matching a layout decodes to is what ``Payload.FromString``
gives for it (same fields, same truncation of over-long varints to 32/64
bits, same last-wins rule never needed: a layout is compiled only from a
payload in which no field repeats). The scan refuses anything it does not
mirror exactly — unknown or repeated fields, unexpected wire types, a
metric with several value fields, string/bytes values, names that are not
UTF-8, the ``uuid``/``body`` payload fields — so those payloads always take
the library path. ``tests/gateway/test_sparkplug_wire.py`` checks the
equivalence on random messages and on random byte changes of them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

#: Value fields of a Metric (field number -> (kind, wire type)), §6.4.16.
VALUE_FIELDS: Final[dict[int, tuple[str, int]]] = {
    10: ("int_value", 0),
    11: ("long_value", 0),
    12: ("float_value", 5),
    13: ("double_value", 1),
    14: ("boolean_value", 0),
}
_FLAG_FIELDS: Final = {5, 6, 7}  # is_historical, is_transient, is_null (bool varints)
_MASK64: Final = (1 << 64) - 1
_MAX_VARINT: Final = 10
_STRUCT_CODE: Final = {1: "d", 5: "f"}  # wire type of a fixed-width value -> struct code
_VARINT_CACHE: Final = 4096  # decoded varints remembered per :class:`Varints`


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """The varint at ``pos`` and the position after it; None if truncated or over 10 bytes."""
    value = shift = 0
    for i in range(pos, min(pos + _MAX_VARINT, len(buf))):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    return None


class Varints:
    """Decodes varints of a known width from their raw bytes, remembering recent ones.

    A raw varint of width ``w`` is valid when its first ``w - 1`` bytes carry
    the continuation bit and the last does not (else the payload is not of
    the layout). Values are reduced to 64 bits, as protobuf does. The memory
    is bounded (cleared at :data:`_VARINT_CACHE` entries): timestamps and
    ``seq`` repeat, within a message and across messages.
    """

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[bytes, int] = {}

    def value(self, raw: bytes) -> int | None:
        """The value of the varint ``raw`` (its whole length), or None if ``raw`` is not one."""
        got = self._known.get(raw)
        if got is not None:
            return got
        return self._decode(raw)

    def _decode(self, raw: bytes) -> int | None:
        last = len(raw) - 1
        if raw[last] >= 0x80 or any(b < 0x80 for b in raw[:last]):
            return None
        value = 0
        for i, b in enumerate(raw):
            value |= (b & 0x7F) << (7 * i)
        value &= _MASK64
        if len(self._known) >= _VARINT_CACHE:
            self._known.clear()
        self._known[raw] = value
        return value


@dataclass(frozen=True, slots=True)
class MetricShape:
    """One metric of a layout: how it is addressed and where its variable fields are.

    ``name``/``alias`` as the protobuf library reports them ("" and 0 when
    absent); ``ts_at``/``value_at`` index the unpacked tuple (None: absent);
    ``kind`` the value field's name (None: no value).
    """

    name: str
    alias: int
    is_null: bool
    kind: str | None
    value_at: int | None
    ts_at: int | None


def _getter(indexes: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function taking those items of a tuple, always as a tuple."""
    if len(indexes) >= 2:
        return itemgetter(*indexes)
    if indexes:
        i = indexes[0]
        return lambda t: (t[i],)
    return lambda _t: ()


@dataclass(frozen=True, slots=True)
class Layout:
    """The shape of one payload; see the module docstring."""

    size: int
    codec: struct.Struct
    fixed_of: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    fixed: tuple[Any, ...]
    ts_at: int | None  # the payload timestamp's raw varint
    seq_at: int | None
    metrics: tuple[MetricShape, ...]
    varint_items: frozenset[int]  # the items that are raw varints (checked when read)

    def unpack(self, payload: bytes) -> tuple[Any, ...] | None:
        """The payload's items (raw varints as bytes, doubles/floats as float), or None.

        None: the payload is not of this layout (another size, or a fixed byte
        differs). Varint widths are checked by :class:`Varints` as they are read.
        """
        if len(payload) != self.size:
            return None
        items = self.codec.unpack(payload)
        if self.fixed_of(items) != self.fixed:
            return None
        return items


class _Builder:
    """Accumulates a struct format: the fixed byte runs between the variable fields."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.codes: list[str] = []
        self.fixed_at: list[int] = []
        self.fixed: list[bytes] = []
        self.varints: set[int] = set()
        self._pos = 0  # where the current run of fixed bytes starts

    def _run(self, end: int) -> None:
        if end > self._pos:
            self.fixed_at.append(len(self.codes))
            self.fixed.append(self.payload[self._pos : end])
            self.codes.append(f"{end - self._pos}s")

    def variable(self, start: int, end: int, code: str) -> int:
        """A variable field at ``start:end`` (struct ``code``: d, f or s); its item index."""
        self._run(start)
        if code == "s":
            self.varints.add(len(self.codes))
            code = f"{end - start}s"
        self.codes.append(code)
        self._pos = end
        return len(self.codes) - 1

    def finish(self) -> None:
        """Close the last run of fixed bytes (up to the end of the payload)."""
        self._run(len(self.payload))
        self._pos = len(self.payload)


def _field(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int] | None:
    """(field number, wire type, start of the value, end of the value) at ``pos``."""
    key = _varint(buf, pos)
    if key is None:
        return None
    tag, vpos = key
    number, wire = tag >> 3, tag & 7
    if wire == 0:
        v = _varint(buf, vpos)
        vend = None if v is None else v[1]
    elif wire == 1:
        vend = vpos + 8
    elif wire == 5:
        vend = vpos + 4
    elif wire == 2:
        n = _varint(buf, vpos)
        if n is None:
            return None
        vpos = n[1]
        vend = vpos + n[0]
    else:
        return None
    if number == 0 or vend is None or vend > end:
        return None
    return number, wire, vpos, vend


def _metric(b: _Builder, pos: int, end: int) -> MetricShape | None:
    """Scan one Metric message occupying ``pos:end``."""
    buf = b.payload
    seen: set[int] = set()
    name, alias, is_null = "", 0, False
    kind: str | None = None
    value_at = ts_at = None
    while pos < end:
        f = _field(buf, pos, end)
        if f is None:
            return None
        number, wire, vpos, vend = f
        if number in seen or (number in VALUE_FIELDS and kind is not None):
            return None
        seen.add(number)
        if number == 1 and wire == 2:
            try:
                name = buf[vpos:vend].decode("utf-8")
            except UnicodeDecodeError:
                return None
        elif number in (2, 4) or number in _FLAG_FIELDS:  # alias, datatype, flags: fixed
            v = _varint(buf, vpos) if wire == 0 else None
            if v is None:
                return None
            alias = v[0] & _MASK64 if number == 2 else alias
            is_null = bool(v[0]) if number == 7 else is_null
        elif number == 3 and wire == 0:
            ts_at = b.variable(vpos, vend, "s")
        elif number in VALUE_FIELDS and VALUE_FIELDS[number][1] == wire:
            kind = VALUE_FIELDS[number][0]
            value_at = b.variable(vpos, vend, _STRUCT_CODE.get(wire, "s"))
        else:
            return None
        pos = vend
    return MetricShape(name, alias, is_null, kind, value_at, ts_at)


def compile_layout(payload: bytes) -> Layout | None:
    """The layout of ``payload`` (a Sparkplug B Payload), or None if it is not one to template."""
    b = _Builder(payload)
    metrics: list[MetricShape] = []
    ts_at = seq_at = None
    seen: set[int] = set()
    pos, end = 0, len(payload)
    while pos < end:
        f = _field(payload, pos, end)
        if f is None:
            return None
        number, wire, vpos, vend = f
        if number == 2 and wire == 2:
            m = _metric(b, vpos, vend)
            if m is None:
                return None
            metrics.append(m)
        elif number in (1, 3) and wire == 0 and number not in seen:
            seen.add(number)
            at = b.variable(vpos, vend, "s")
            ts_at, seq_at = (at, seq_at) if number == 1 else (ts_at, at)
        else:
            return None
        pos = vend
    b.finish()
    codec = struct.Struct("<" + "".join(b.codes))
    if codec.size != len(payload):  # cannot happen for a complete scan; refuse if it does
        return None
    return Layout(
        size=len(payload),
        codec=codec,
        fixed_of=_getter(b.fixed_at),
        fixed=tuple(b.fixed),
        ts_at=ts_at,
        seq_at=seq_at,
        metrics=tuple(metrics),
        varint_items=frozenset(b.varints),
    )
