"""The public release layout as msgspec Structs, decoded once where it enters the output.

A party sends its layout as a plain JSON object inside its result message
(:func:`cloud_tecc.analytics.release.build_release` builds it as a dict, so
the wire format is the one before these types). The output service decodes it
strictly, once, as part of the result message
(:class:`cloud_tecc.output.collector.ResultMessage`): unknown keys, wrong
types (``true`` is not a count) and negative counts are refused with the
field's path. Everything after the boundary reads attributes that mypy
checks.

Wire keys kept as they are, mapped to words here: an alert's ``n`` is
:attr:`AlertEntry.count`, a window's ``ts`` is :attr:`WindowEntry.timestamps`,
``class`` is ``fleet_class`` and the layout's ``fleet_dev`` is
:attr:`ReleaseLayout.fleet_deviates`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from cloud_tecc.errors import AnalyticsError

Name = Annotated[str, Meta(min_length=1, max_length=200)]
NonNegative = Annotated[int, Meta(ge=0)]
#: ``[exponent, offset]`` of a sensor scale (:meth:`tecc_contract.scale.Scale.to_json`).
ScaleDoc = tuple[int, float]


class _Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of the layout's entries: strict, frozen (hashable), keyword-only."""


class WindowEntry(_Entry, frozen=True, kw_only=True, omit_defaults=True):
    """``windows[i]``: one stream's window; ``fields`` empty when it is withheld.

    ``scale`` absent: the identity (layouts before sensor scales).
    ``timestamps`` (wire ``ts``): the window's delta-encoded, zlib'd timestamps,
    present when an alert of the window is released.
    """

    gateway: Name
    sensor: Name
    count: NonNegative
    fields: tuple[Name, ...]
    scale: ScaleDoc | None = None
    timestamps: str | None = msgspec.field(default=None, name="ts")


class AlertEntry(_Entry, frozen=True, kw_only=True):
    """``alerts[i]``: the flags of one detector over readings ``first .. first+count`` of a window.

    ``count`` is the wire key ``n``.
    """

    gateway: Name
    sensor: Name
    detector: Name
    first: NonNegative
    count: NonNegative = msgspec.field(name="n")


class FleetEntry(_Entry, frozen=True, kw_only=True, omit_defaults=True):
    """``fleet[i]``: one fleet class's statistics (``fields`` empty when withheld)."""

    fleet_class: Name = msgspec.field(name="class")
    count: NonNegative
    fields: tuple[Name, ...]
    scale: ScaleDoc | None = None


class DeviationEntry(_Entry, frozen=True, kw_only=True):
    """``fleet_dev[i]``: a window's fleet-deviation flag against its class."""

    gateway: Name
    sensor: Name
    fleet_class: Name = msgspec.field(name="class")


class ReleaseLayout(_Entry, frozen=True, kw_only=True, omit_defaults=True):
    """What one epoch's share vector holds, in vector order (docs/CLOUD.md, "Release layout").

    ``run`` names the computation of the epoch (the leader's proposal; absent
    from the plaintext reference's layouts).
    """

    epoch_ns: int
    window_ns: Annotated[int, Meta(ge=1)]
    frac_bits: Annotated[int, Meta(ge=1, le=62)]
    flag_lane_bits: Annotated[int, Meta(ge=1, le=16)]
    parties: Annotated[int, Meta(ge=1)]
    windows: tuple[WindowEntry, ...]
    alerts: tuple[AlertEntry, ...]
    fleet: tuple[FleetEntry, ...]
    fleet_deviates: tuple[DeviationEntry, ...] = msgspec.field(name="fleet_dev")
    run: str | None = None


def as_layout(doc: Mapping[str, Any]) -> ReleaseLayout:
    """A layout given as a JSON object (a party's dict, a stored row), strictly.

    :class:`AnalyticsError` naming the field (``$.windows[0].count``) otherwise.
    """
    try:
        return msgspec.convert(doc, ReleaseLayout, strict=True)
    except msgspec.ValidationError as exc:
        raise AnalyticsError(f"malformed release layout: {exc}") from exc


def layout_doc(layout: ReleaseLayout) -> dict[str, Any]:
    """The layout as the JSON object the party sent (wire key names)."""
    doc: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(layout))
    return doc
