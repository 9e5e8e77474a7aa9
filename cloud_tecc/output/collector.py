"""Sans-IO collection of result shares: wait for every party, check, reconstruct, decode.

Reconstruction happens only here. An epoch completes when each party's
latest share vector is present and all layouts are identical; the vectors are
added modulo 2^64 and decoded under the output service's own copy of the
policy (which must allow everything in the layout).

The layout is decoded once, with the result message, into a
:class:`~cloud_tecc.analytics.layout.ReleaseLayout`, and checked against the
policy once: :class:`LayoutChecks` remembers the layouts it has passed (the
N parties of an epoch send the same one), so an epoch of N submissions runs
the policy check and the vector-length count once, not N + 1 times.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from cloud_tecc.analytics.layout import ReleaseLayout
from cloud_tecc.analytics.policy import AnalyticsPolicy
from cloud_tecc.analytics.release import Decoded, check_layout, decode, expected_length
from cloud_tecc.analytics.units import class_members
from cloud_tecc.config import MAX_SHARDS
from cloud_tecc.errors import AnalyticsError
from tecc_contract.ring import from_bytes


class ResultMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A party's result message (the body inside the signed HPKE envelope), decoded strictly.

    ``seq`` is the party's commit time (freshness); ``shard`` the shard worker
    that computed it (absent: shard 0, a party of the release before shards);
    ``vector`` the base64 of the little-endian uint64 share vector.
    """

    layout: ReleaseLayout
    vector: str
    seq: Annotated[int, Meta(ge=0)]
    shard: Annotated[int, Meta(ge=0, lt=MAX_SHARDS)] = 0
    party: Annotated[int, Meta(ge=0)] | None = None

    def shares(self) -> bytes:
        """The share vector's bytes (ValueError if ``vector`` is not base64)."""
        return base64.b64decode(self.vector, validate=True)


def decode_result(body: bytes) -> ResultMessage:
    """Decode a result message; ValueError naming the field (``$.shard`` ...) otherwise."""
    try:
        return msgspec.json.decode(body, type=ResultMessage)
    except msgspec.ValidationError as exc:
        raise ValueError(f"result message: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Completed:
    """A reconstructed epoch; ``withheld_classes`` lost their fleet rows (see balance_fleet)."""

    epoch_ns: int
    window_ns: int
    rows: Decoded
    withheld_classes: tuple[str, ...] = ()
    #: Fleet class -> its (gateway, sensor) windows in this layout (the shard's classes).
    classes: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)


def fleet_members(
    policy: AnalyticsPolicy, layout: ReleaseLayout
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Fleet class -> the streams of the layout in it (every window, released or not)."""
    out: dict[str, set[tuple[str, str]]] = {}
    for w in layout.windows:
        cls = policy.fleet_class(w.sensor)
        if cls is not None:
            out.setdefault(cls, set()).add((w.gateway, w.sensor))
    return {c: tuple(sorted(m)) for c, m in out.items()}


def withhold_fleet(policy: AnalyticsPolicy, rows: Decoded, bad: Collection[str]) -> Decoded:
    """``rows`` without the fleet rows of classes ``bad`` and their windows' deviation flags."""
    if not bad:
        return rows
    fleet = [f for f in rows.fleet if f["class"] not in bad]
    windows = []
    for row in rows.windows:
        if "deviates_from_fleet" in row and policy.fleet_class(str(row["sensor"])) in bad:
            windows.append({k: v for k, v in row.items() if k != "deviates_from_fleet"})
        else:
            windows.append(row)
    return Decoded(windows, rows.alerts, fleet, rows.evaluated)


def balance_fleet(
    policy: AnalyticsPolicy, layout: ReleaseLayout, rows: Decoded
) -> tuple[Decoded, tuple[str, ...]]:
    """Keep a class's fleet statistics only if they cover exactly its released windows.

    A fleet aggregate over a withheld window (fewer than ``min_count``
    readings) minus the released windows of its class gives the withheld
    window back (docs/THREAT_MODEL.md). So a fleet row whose count is not the
    sum of the counts of the class's released windows is not stored, nor are
    the deviation flags computed against it; the rest of the epoch is.
    """
    released: dict[str, int] = {}
    members = class_members(policy, layout.windows)  # one scale per class
    for w in layout.windows:
        cls = policy.fleet_class(w.sensor)
        if cls is not None and w.fields and (w.gateway, w.sensor) in members:
            released[cls] = released.get(cls, 0) + w.count
    bad = tuple(
        sorted(
            str(f["class"])
            for f in rows.fleet
            if f.get("mean") is not None and int(f["count"]) != released.get(str(f["class"]), 0)
        )
    )
    return withhold_fleet(policy, rows, bad), bad


def check_entries(policy: AnalyticsPolicy, layout: ReleaseLayout, n_parties: int) -> None:
    """The output's own re-check of what the analytics layout check does not cover.

    Alert and fleet-deviation entries must belong to a released window (at
    least ``min_count`` readings, flags inside the window), a deviation entry
    to a released fleet class, and the layout must be for the configured
    number of parties (shares of a different split would decode to noise).
    """
    if layout.parties != n_parties:
        raise AnalyticsError(
            f"layout is for {layout.parties} parties, this output service has "
            f"{n_parties} (parties in its config)"
        )
    released = {
        (w.gateway, w.sensor): w.count
        for w in layout.windows
        if w.fields and w.count >= policy.min_count
    }
    for a in layout.alerts:
        count = released.get((a.gateway, a.sensor))
        if count is None:
            raise AnalyticsError(
                f"alert entry {a.gateway}/{a.sensor} has no released window "
                f"(min_count {policy.min_count})"
            )
        if not 0 <= a.first < a.first + a.count <= count:
            raise AnalyticsError(f"alert entry {a.gateway}/{a.sensor} exceeds its window")
    classes = {f.fleet_class for f in layout.fleet if f.fields and f.count >= policy.min_count}
    for d in layout.fleet_deviates:
        if (d.gateway, d.sensor) not in released or d.fleet_class not in classes:
            raise AnalyticsError(
                f"fleet-deviation entry {d.gateway}/{d.sensor} needs a released window "
                f"and a released class (min_count {policy.min_count})"
            )


class LayoutChecks:
    """The policy check of release layouts, run once per distinct layout.

    :meth:`length` checks a layout (:func:`~cloud_tecc.analytics.release.check_layout`
    and :func:`check_entries`) the first time it sees it and returns its
    share-vector length; the same layout again (the other parties of the
    epoch, the completion) is a dictionary hit. The memory holds the last
    ``capacity`` layouts (least recently used dropped), so outside input
    cannot grow it. A layout that fails is not remembered.
    """

    def __init__(self, policy: AnalyticsPolicy, n_parties: int, *, capacity: int = 64) -> None:
        self.policy, self.n_parties, self.capacity = policy, n_parties, capacity
        self._passed: OrderedDict[ReleaseLayout, int] = OrderedDict()

    def length(self, layout: ReleaseLayout) -> int:
        """The share-vector length of a layout the policy allows; AnalyticsError otherwise."""
        known = self._passed.get(layout)
        if known is not None:
            self._passed.move_to_end(layout)
            return known
        check_layout(self.policy, layout)
        check_entries(self.policy, layout, self.n_parties)
        n = expected_length(layout)
        self._passed[layout] = n
        if len(self._passed) > self.capacity:
            self._passed.popitem(last=False)
        return n


def validate_submission(
    policy: AnalyticsPolicy,
    layout: ReleaseLayout,
    vector: bytes,
    *,
    n_parties: int = 2,
    checks: LayoutChecks | None = None,
) -> None:
    """Check one party's submission before storing it (``checks``: the service's memory)."""
    checks = checks or LayoutChecks(policy, n_parties)
    if len(vector) != 8 * checks.length(layout):
        raise AnalyticsError("share vector length does not match the layout")


def try_complete(
    policy: AnalyticsPolicy,
    n_parties: int,
    pending: dict[int, tuple[ReleaseLayout, bytes]],
    *,
    checks: LayoutChecks | None = None,
) -> Completed | None:
    """Reconstruct an epoch if every party's shares are present and consistent."""
    if sorted(pending) != list(range(n_parties)):
        return None
    layout = pending[0][0]
    if any(lay != layout for lay, _ in pending.values()):
        raise AnalyticsError("parties sent different layouts for the same epoch")
    checks = checks or LayoutChecks(policy, n_parties)
    length = checks.length(layout)
    total = np.zeros(length, dtype=np.uint64)
    for _, vec in pending.values():
        total += from_bytes(vec)
    rows, withheld = balance_fleet(policy, layout, decode(layout, total, length=length))
    return Completed(
        layout.epoch_ns,
        layout.window_ns,
        rows,
        withheld,
        fleet_members(policy, layout),
    )
