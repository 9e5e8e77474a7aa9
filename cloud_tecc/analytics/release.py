"""What an epoch releases under the policy, and how the output service decodes it.

A party turns its :class:`EpochOutput` into a :class:`Release`: a public
layout (which windows, fields, detectors and timestamps) plus one share vector
in layout order. Only policy-approved items enter the vector; a window with
fewer than ``min_count`` readings contributes nothing but its count. The output
service adds the parties' vectors (after checking the layouts are identical)
and :func:`decode` turns the sum into rows.

Per-reading flags are released compactly. A flag ``b ∈ {0, 1}`` with
arithmetic shares ``s_i`` satisfies ``b = (Σ lsb(s_i)) mod 2``, so every
party releases only the lowest bit of its share, packed into
``FLAG_LANE_BITS``-bit lanes of uint64 words (16 flags per word): the lanes of
N ≤ 15 parties add without carrying into each other, so the output service's
ordinary addition mod 2^64 yields the number of odd shares per lane, whose
parity is the flag. The lowest bit of a uniformly random share is a uniform
bit, so nothing is released beyond the flag (docs/MPC.md §6). The readings a
detector flags are public metadata positions: the layout names a contiguous
range of the window's readings per detector, and the window's timestamps are
sent once per stream (delta-encoded, zlib-compressed).
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_tecc.analytics.layout import ReleaseLayout
from cloud_tecc.analytics.plan import EpochInput
from cloud_tecc.analytics.policy import AnalyticsPolicy, Release
from cloud_tecc.analytics.program import EpochOutput
from cloud_tecc.analytics.units import class_members, moments, window_scale
from cloud_tecc.errors import AnalyticsError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray

#: Bits per packed flag lane (sums of up to 15 parties' bits fit without carry).
FLAG_LANE_BITS = 4
_PER_WORD = 64 // FLAG_LANE_BITS
_DETECTORS = (
    ("limit", Release.LIMIT_ALERTS),
    ("rate", Release.RATE_ALERTS),
    ("zscore", Release.ZSCORE_ALERTS),
    ("flatline", Release.FLATLINE_ALERTS),
)


@dataclass(frozen=True, slots=True, eq=False)
class ReleaseShares:
    """One party's released shares of one epoch: public layout plus share vector.

    ``layout`` is the JSON object the party sends (the output decodes it into
    a :class:`~cloud_tecc.analytics.layout.ReleaseLayout`).
    """

    layout: dict[str, Any]
    vector: RingArray


def pack_flags(flags: RingArray) -> RingArray:
    """Lowest bits of flag shares, ``FLAG_LANE_BITS``-bit lanes, 16 per uint64 word."""
    flat = np.zeros(-(-len(flags) // _PER_WORD) * _PER_WORD, dtype=np.uint64)
    flat[: len(flags)] = flags & np.uint64(1)
    shifts = np.arange(_PER_WORD, dtype=np.uint64) * np.uint64(FLAG_LANE_BITS)
    words: RingArray = np.bitwise_or.reduce(flat.reshape(-1, _PER_WORD) << shifts, axis=1)
    return words


def unpack_flags(words: RingArray, n: int, parties: int) -> RingArray:
    """Inverse of :func:`pack_flags` on the sum of ``parties`` parties' words: the flags, 0/1.

    Every lane of a consistent sum is at most ``parties`` and the padding lanes
    are 0; anything else means the shares disagree (:class:`AnalyticsError`).
    """
    shifts = np.arange(_PER_WORD, dtype=np.uint64) * np.uint64(FLAG_LANE_BITS)
    lanes = ((words[:, None] >> shifts) & np.uint64((1 << FLAG_LANE_BITS) - 1)).reshape(-1)
    if np.any(lanes[:n] > np.uint64(parties)) or np.any(lanes[n:]):
        raise AnalyticsError("reconstructed flags are not 0/1: the parties' shares disagree")
    return lanes[:n] & np.uint64(1)


def _pack_ts(ts: npt.NDArray[np.int64]) -> str:
    deltas = np.diff(ts.astype(np.int64), prepend=np.int64(0))
    return base64.b64encode(zlib.compress(deltas.astype("<i8").tobytes(), 1)).decode()


def _unpack_ts(text: str) -> npt.NDArray[np.int64]:
    try:
        raw = zlib.decompress(base64.b64decode(text, validate=True))
    except (ValueError, zlib.error) as exc:
        raise AnalyticsError(f"malformed window timestamps: {exc}") from exc
    if len(raw) % 8:
        raise AnalyticsError("malformed window timestamps")
    return np.cumsum(np.frombuffer(raw, dtype="<i8").astype(np.int64))


def _window_fields(policy: AnalyticsPolicy) -> list[str]:
    fields = []
    if policy.allows(Release.MEAN) or policy.allows(Release.STD):
        fields.append("sum")
    if policy.allows(Release.STD):
        fields.append("sumsq")
    if policy.allows(Release.MIN):
        fields.append("min")
    if policy.allows(Release.MAX):
        fields.append("max")
    return fields


def build_release(
    policy: AnalyticsPolicy,
    epoch: EpochInput,
    out: EpochOutput,
    frac_bits: int,
    parties: int = 1,
) -> ReleaseShares:
    """Select the policy-approved items of an epoch and lay them out.

    ``parties`` is the number of share vectors the output service will add
    (1 for the plaintext reference).
    """
    p = out.plan
    fields = _window_fields(policy)
    mm_pos = {int(s): i for i, s in enumerate(p.minmax_streams)}
    windows, alerts, parts, alert_parts = [], [], [], []
    starts = np.concatenate([[0], np.cumsum(p.count)[:-1]])
    for i, s in enumerate(epoch.streams):
        ok = int(p.count[i]) >= policy.min_count
        row: dict[str, Any] = {"gateway": s.gateway, "sensor": s.sensor, "count": int(p.count[i])}
        row["fields"] = fields if ok else []
        if not s.scale.is_identity:  # absent: the identity (as in older layouts)
            row["scale"] = s.scale.to_json()
        windows.append(row)
        if not ok:
            continue
        values = {"sum": out.sum[i], "sumsq": out.sum_sq[i]}
        if "min" in fields or "max" in fields:
            values |= {"min": out.min[mm_pos[i]], "max": out.max[mm_pos[i]]}
        parts.append(np.array([values[f] for f in fields], dtype=np.uint64))
        sl = slice(int(starts[i]), int(starts[i] + p.count[i]))
        masks = {
            "limit": p.limit_mask[sl],
            "rate": p.rate_mask[sl],
            "zscore": p.zscore_mask[sl],
            "flatline": p.flatline_mask[sl],
        }
        flags = {
            "limit": out.limit[sl],
            "rate": out.rate[sl],
            "zscore": out.zscore[sl],
            "flatline": out.flatline[sl],
        }
        for name, item in _DETECTORS:
            m = masks[name]
            if policy.allows(item) and m.any():
                first = int(np.argmax(m))
                if not m[first:].all():  # the plan's masks are suffixes of the window
                    raise AnalyticsError(f"{name} flags of a window are not contiguous")
                if "ts" not in row:
                    row["ts"] = _pack_ts(s.timestamps_ns)
                alerts.append(
                    {
                        "gateway": s.gateway,
                        "sensor": s.sensor,
                        "detector": name,
                        "first": first,
                        "n": int(p.count[i]) - first,
                    }
                )
                alert_parts.append(flags[name][first:])
    if alert_parts:
        parts.append(pack_flags(np.concatenate(alert_parts)))
    fleet, fleet_dev = _fleet_release(policy, epoch, out, parts)
    layout = {
        "epoch_ns": epoch.start_ns,
        "window_ns": policy.window_ns,
        "frac_bits": frac_bits,
        "flag_lane_bits": FLAG_LANE_BITS,
        "parties": parties,
        "windows": windows,
        "alerts": alerts,
        "fleet": fleet,
        "fleet_dev": fleet_dev,
    }
    vec = np.concatenate(parts).astype(np.uint64) if parts else np.zeros(0, np.uint64)
    return ReleaseShares(layout, vec)


def _fleet_release(
    policy: AnalyticsPolicy, epoch: EpochInput, out: EpochOutput, parts: list[RingArray]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    p = out.plan
    fleet: list[dict[str, Any]] = []
    dev: list[dict[str, Any]] = []
    if not policy.allows(Release.FLEET):
        return fleet, dev
    for k, name in enumerate(p.classes):
        n = int(out.fleet_count[k])
        ok = n >= policy.min_count
        scale = epoch.streams[int(p.class_first_stream[k])].scale
        row: dict[str, Any] = {"class": name, "count": n, "fields": ["sum", "sumsq"] if ok else []}
        if not scale.is_identity:
            row["scale"] = scale.to_json()
        fleet.append(row)
        if ok:
            parts.append(np.array([out.fleet_sum[k], out.fleet_sum_sq[k]], dtype=np.uint64))
    for i, s in enumerate(epoch.streams):
        k = int(p.fleet_class[i])
        if (
            k >= 0
            and int(out.fleet_count[k]) >= policy.min_count
            and p.count[i] >= policy.min_count
        ):
            dev.append({"gateway": s.gateway, "sensor": s.sensor, "class": p.classes[k]})
            parts.append(out.fleet_deviates[i : i + 1])
    return fleet, dev


@dataclass(frozen=True, slots=True)
class Decoded:
    """Released rows of one epoch, ready to store."""

    windows: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    fleet: list[dict[str, Any]]
    #: readings each (gateway, sensor, detector) evaluated in the epoch; an alert's
    #: ``index`` is its position among them (the incident tracker's m-of-n rule)
    evaluated: dict[tuple[str, str, str], int] = field(default_factory=dict)


def _flag(v: int) -> bool:
    if v not in (0, 1):
        raise AnalyticsError("a reconstructed flag is not 0/1: the parties' shares disagree")
    return v == 1


def _alert_words(layout: ReleaseLayout) -> int:
    flags = sum(a.count for a in layout.alerts)
    return -(-flags // _PER_WORD)


def _decode_alerts(layout: ReleaseLayout, values: RingArray, pos: int) -> list[dict[str, Any]]:
    if layout.flag_lane_bits != FLAG_LANE_BITS:
        raise AnalyticsError(f"release flags must use {FLAG_LANE_BITS}-bit lanes")
    total = sum(a.count for a in layout.alerts)
    parties = layout.parties
    if not 1 <= parties < 1 << FLAG_LANE_BITS:
        raise AnalyticsError(f"flag lanes carry at most {(1 << FLAG_LANE_BITS) - 1} parties")
    bits = unpack_flags(values[pos : pos + _alert_words(layout)], total, parties)
    windows = {(w.gateway, w.sensor): w for w in layout.windows}
    flagged: list[dict[str, Any]] = []
    off = 0
    decoded: dict[tuple[str, str], npt.NDArray[np.int64]] = {}
    for a in layout.alerts:
        key = (a.gateway, a.sensor)
        first, n = a.first, a.count
        mine = bits[off : off + n]
        off += n
        if key not in decoded:
            w = windows.get(key)
            if w is None or w.timestamps is None:
                raise AnalyticsError("an alert's window carries no timestamps")
            decoded[key] = _unpack_ts(w.timestamps)
        ts = decoded[key]
        if ts.size != windows[key].count or first + n != ts.size:
            raise AnalyticsError("alert positions do not match their window")
        flagged.extend(
            {
                "gateway": a.gateway,
                "sensor": a.sensor,
                "ts_ns": int(ts[first + i]),
                "detector": a.detector,
                "index": int(i),
            }
            for i in np.flatnonzero(mine == 1)
        )
    return flagged


def expected_length(layout: ReleaseLayout) -> int:
    """Length of the share vector a layout describes."""
    n = sum(len(w.fields) for w in layout.windows)
    n += _alert_words(layout)
    n += sum(len(f.fields) for f in layout.fleet)
    return n + len(layout.fleet_deviates)


def decode(layout: ReleaseLayout, values: RingArray, *, length: int | None = None) -> Decoded:
    """Turn a reconstructed vector into window, alert and fleet rows.

    ``length`` is :func:`expected_length` of ``layout`` if the caller has it.
    """
    if len(values) != (expected_length(layout) if length is None else length):
        raise AnalyticsError("release vector length does not match its layout")
    codec = FixedPoint(layout.frac_bits)
    start = layout.epoch_ns
    n_win = sum(len(w.fields) for w in layout.windows)
    n_alert = _alert_words(layout)
    it = iter(int(v) for v in values[:n_win])
    windows = []
    for w in layout.windows:
        row: dict[str, Any] = {
            "gateway": w.gateway,
            "sensor": w.sensor,
            "start_ns": start,
            "count": w.count,
        }
        got = {f: next(it) for f in w.fields}
        scale = window_scale(w)
        if "sum" in got:
            mean, std = moments(got["sum"], got.get("sumsq"), w.count, codec, scale)
            row["mean"] = mean
            if "sumsq" in got:
                row["std"] = std
        for f in ("min", "max"):
            if f in got:
                row[f] = scale.value(codec.decode_scalar(got[f]))
        windows.append(row)
    alerts = _decode_alerts(layout, values, n_win)
    evaluated: dict[tuple[str, str, str], int] = {}
    for a in layout.alerts:
        k3 = (a.gateway, a.sensor, a.detector)
        evaluated[k3] = evaluated.get(k3, 0) + a.count
    it = iter(int(v) for v in values[n_win + n_alert :])
    fleet = []
    for fl in layout.fleet:
        frow: dict[str, Any] = {"class": fl.fleet_class, "start_ns": start, "count": fl.count}
        if fl.fields:
            frow["mean"], frow["std"] = moments(
                next(it), next(it), fl.count, codec, window_scale(fl)
            )
        fleet.append(frow)
    by_key = {(w["gateway"], w["sensor"]): w for w in windows}
    for d in layout.fleet_deviates:
        by_key[(d.gateway, d.sensor)]["deviates_from_fleet"] = _flag(next(it))
    return Decoded(windows, alerts, fleet, evaluated)


def check_layout(policy: AnalyticsPolicy, layout: ReleaseLayout) -> None:
    """Refuse a layout that releases more than ``policy`` allows (defence in depth)."""
    try:
        allowed = set(_window_fields(policy))
        for w in layout.windows:
            if w.fields and (w.count < policy.min_count or not set(w.fields) <= allowed):
                raise AnalyticsError(f"window {w.sensor!r} releases beyond the policy")
        names = {name for name, item in _DETECTORS if policy.allows(item)}
        for a in layout.alerts:
            if a.detector not in names:
                raise AnalyticsError(f"detector {a.detector!r} is not released by the policy")
        if (layout.fleet or layout.fleet_deviates) and not policy.allows(Release.FLEET):
            raise AnalyticsError("fleet statistics are not released by the policy")
        counts = {(w.gateway, w.sensor): w.count for w in layout.windows}
        for a in layout.alerts:
            if counts[(a.gateway, a.sensor)] < policy.min_count:
                raise AnalyticsError(f"alerts of window {a.sensor!r} below min_count")
        _check_fleet(policy, layout, counts)
    except KeyError as exc:
        raise AnalyticsError(f"malformed release layout: no window {exc}") from exc


def _check_fleet(
    policy: AnalyticsPolicy, layout: ReleaseLayout, counts: dict[tuple[str, str], int]
) -> None:
    """Fleet entries cover exactly the released windows of their class (docs/THREAT_MODEL.md).

    A fleet aggregate over a set of windows that differs from the released
    windows of its class by a withheld window would give that window's sums
    away (fleet minus the released windows), so the count of every fleet
    entry must equal the sum of the counts of the class's windows that reach
    ``min_count`` — counts are public, so this is checked here, in the clear.
    """
    in_class = class_members(policy, layout.windows)
    released: dict[str, int] = {}
    for w in layout.windows:
        if (w.gateway, w.sensor) in in_class:
            name = str(policy.fleet_class(w.sensor))
            released[name] = released.get(name, 0) + w.count
    seen: set[str] = set()
    for f in layout.fleet:
        name, n = f.fleet_class, f.count
        if name in seen:
            raise AnalyticsError(f"fleet class {name!r} appears twice in one release")
        seen.add(name)
        if f.fields and n < policy.min_count:
            raise AnalyticsError(f"fleet class {name!r} has too few readings")
        if n != released.get(name, 0):
            raise AnalyticsError(
                f"fleet class {name!r} counts {n} readings but its released windows hold "
                f"{released.get(name, 0)}: a fleet aggregate may cover released windows only"
            )
    for d in layout.fleet_deviates:
        key = (d.gateway, d.sensor)
        if (
            counts[key] < policy.min_count
            or policy.fleet_class(d.sensor) != d.fleet_class
            or key not in in_class
        ):
            raise AnalyticsError(f"fleet deviation of window {d.sensor!r} beyond the policy")
