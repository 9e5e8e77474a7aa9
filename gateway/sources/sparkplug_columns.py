"""A compiled payload layout bound to a node's birth: a whole DATA message into columns.

:class:`BoundLayout` joins a :class:`~gateway.sources.sparkplug_wire.Layout`
with what the node's birth certificate says about each of its metrics:
sensor id and datatype by alias or name (resolved once, at binding, not per
message), which metrics are not sensors (``bdSeq``, ``Node Control/…``,
``Properties/…``) and which are rejects by their fixed bytes (``is_null`` is
``bad_status``; a metric without a value is ``malformed``). Decoding a
message of the layout is then one ``struct`` unpack and a few C-level passes
that yield ``seq`` and the sensor, timestamp and value columns, exactly what
:meth:`SparkplugHost._data <gateway.sources.sparkplug.SparkplugHost>` yields
for the same payload through the ``protobuf`` library (same values, same
two's complement per birth datatype, same timestamps in ns, same rejects in
the same order).

Binding fails (``None``) when a metric is not in the birth (the library path
then counts it and asks for a rebirth), so a bound layout never needs one
for an unknown alias; sequence numbers are checked by the host for both
paths alike. A layout is bound per (node, device) and dropped at the next
birth, since a birth may reassign aliases and datatypes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.sources.sparkplug_wire import Layout, Varints, _getter
from tecc_contract.errors import RejectReason
from tecc_contract.sparkplug import SparkplugType

#: Metric names that are never sensors (Sparkplug 3.0 §6.4.6, §6.4.8).
NOT_SENSORS: Final = ("bdSeq", "Node Control/", "Properties/")
_SIGNED_BITS: Final[dict[int, int]] = {
    SparkplugType.INT8: 8,
    SparkplugType.INT16: 16,
    SparkplugType.INT32: 32,
}
_FLOATS: Final = ("double_value", "float_value")
_MASK32: Final = (1 << 32) - 1


def integer_reading(kind: str, raw: int, datatype: int) -> float:
    """The reading of an ``int_value``/``long_value``/``boolean_value`` varint (§6.4.16).

    ``raw`` as protobuf decodes the field (uint32 for ``int_value``, uint64 for
    ``long_value``); Int8/16/32 arrive two's-complement in ``int_value``,
    Int64 in ``long_value``, both by the birth's ``datatype``.
    """
    if kind == "boolean_value":
        return 1.0 if raw else 0.0
    if kind == "int_value":
        v = raw & _MASK32
        bits = _SIGNED_BITS.get(datatype)
        if bits is not None:
            v &= (1 << bits) - 1
            v -= (1 << bits) if v >> (bits - 1) else 0
        return float(v)
    if datatype == SparkplugType.INT64 and raw >> 63:
        return float(raw - (1 << 64))
    return float(raw)


#: One DATA message of a bound layout: ``seq`` (-1 if absent), timestamps (ns), values.
Decoded = tuple[int, list[int], list[float]]


@dataclass(frozen=True, slots=True)
class BoundLayout:
    """A layout whose metrics are resolved to sensors; see the module docstring."""

    layout: Layout
    sensors: tuple[str, ...]  # one per reading the message yields, in metric order
    rejects: tuple[tuple[str, RejectReason], ...]
    values_of: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    kinds: tuple[tuple[str, int], ...] | None  # (kind, birth datatype); None: all floats
    ts_of: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    ts_mask: tuple[bool, ...] | None  # which readings have a metric timestamp; None: all
    others_of: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None  # varints not read otherwise

    def decode(self, payload: bytes, varints: Varints, now_ns: int) -> Decoded | None:
        """The message's columns, or None if ``payload`` is not of this layout."""
        lay = self.layout
        if len(payload) != lay.size:
            return None
        items = lay.codec.unpack(payload)
        if lay.fixed_of(items) != lay.fixed:
            return None
        value = varints.value
        seq = -1 if lay.seq_at is None else value(items[lay.seq_at])
        default = now_ns if lay.ts_at is None else value(items[lay.ts_at])
        if seq is None or default is None:
            return None
        if lay.ts_at is not None:
            default *= 1_000_000
        if self.others_of is not None:
            for raw in self.others_of(items):
                if value(raw) is None:
                    return None
        stamps = self._stamps(self.ts_of(items), varints, default)
        if stamps is None:
            return None
        raw_values = self.values_of(items)
        if self.kinds is None:
            return seq, stamps, list(raw_values)
        values = self._values(raw_values, self.kinds, varints)
        return None if values is None else (seq, stamps, values)

    @staticmethod
    def _values(
        raw_values: tuple[Any, ...], kinds: tuple[tuple[str, int], ...], varints: Varints
    ) -> list[float] | None:
        """Values of mixed kinds: floats as unpacked, varints by kind and birth datatype."""
        values: list[float] = []
        for v, (kind, datatype) in zip(raw_values, kinds, strict=True):
            if kind in _FLOATS:
                values.append(v)
                continue
            got = varints.value(v)
            if got is None:
                return None
            values.append(integer_reading(kind, got, datatype))
        return values

    def _stamps(self, raws: tuple[Any, ...], varints: Varints, default: int) -> list[int] | None:
        n = len(self.sensors)
        if self.ts_mask is None:  # every reading has its own timestamp (the common case)
            if n and raws.count(raws[0]) == n:
                got = varints.value(raws[0])
                return None if got is None else [got * 1_000_000] * n
            stamps = [varints.value(r) for r in raws]
            if None in stamps:
                return None
            return [t * 1_000_000 for t in stamps if t is not None]
        if not any(self.ts_mask):
            return [default] * n
        out: list[int] = []
        it = iter(raws)
        for has in self.ts_mask:
            if not has:
                out.append(default)
                continue
            got = varints.value(next(it))
            if got is None:
                return None
            out.append(got * 1_000_000)
        return out


Entry = tuple[str, int]  # (sensor id, datatype) as learnt at birth


def bind(
    layout: Layout, by_name: Mapping[str, Entry], by_alias: Mapping[int, Entry]
) -> BoundLayout | None:
    """Resolve every metric of ``layout`` against a birth; None if one is not in it."""
    sensors: list[str] = []
    rejects: list[tuple[str, RejectReason]] = []
    value_at: list[int] = []
    kinds: list[tuple[str, int]] = []
    ts_at: list[int] = []
    mask: list[bool] = []
    others: list[int] = []
    for m in layout.metrics:
        if m.name:
            if m.name.startswith(NOT_SENSORS):
                others += [i for i in (m.ts_at, m.value_at) if i is not None]
                continue
            entry = by_name.get(m.name)
        else:
            entry = by_alias.get(m.alias)
        if entry is None:
            return None
        if m.is_null or m.kind is None or m.value_at is None:
            reason = RejectReason.BAD_STATUS if m.is_null else RejectReason.MALFORMED
            rejects.append((entry[0], reason))
            others += [i for i in (m.ts_at, m.value_at) if i is not None]
            continue
        sensors.append(entry[0])
        value_at.append(m.value_at)
        kinds.append((m.kind, entry[1]))
        mask.append(m.ts_at is not None)
        if m.ts_at is not None:
            ts_at.append(m.ts_at)
    # the varints of skipped and rejected metrics are checked too: the library parses them
    others = [i for i in others if i in layout.varint_items]
    return BoundLayout(
        layout=layout,
        sensors=tuple(sensors),
        rejects=tuple(rejects),
        values_of=_getter(value_at),
        kinds=None if all(k in _FLOATS for k, _ in kinds) else tuple(kinds),
        ts_of=_getter(ts_at),
        ts_mask=None if all(mask) else tuple(mask),
        others_of=_getter(others) if others else None,
    )
