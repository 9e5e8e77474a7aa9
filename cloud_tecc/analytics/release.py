"""What an epoch releases under the policy, and how the output service decodes it.

A party turns its :class:`EpochOutput` into a :class:`Release`: a public
layout (which windows, fields, detectors and timestamps) plus one share vector
in layout order. Only policy-approved items enter the vector; a window with
fewer than ``min_count`` readings contributes nothing but its count. The output
service adds the parties' vectors (after checking the layouts are identical)
and :func:`decode` turns the sum into rows.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_tecc.analytics.plan import EpochInput
from cloud_tecc.analytics.policy import AnalyticsPolicy, Release
from cloud_tecc.analytics.program import EpochOutput
from cloud_tecc.errors import AnalyticsError
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.ring import RingArray

_DETECTORS = (
    ("limit", Release.LIMIT_ALERTS),
    ("rate", Release.RATE_ALERTS),
    ("zscore", Release.ZSCORE_ALERTS),
)


@dataclass(frozen=True, slots=True, eq=False)
class ReleaseShares:
    """One party's released shares of one epoch: public layout plus share vector."""

    layout: dict[str, Any]
    vector: RingArray


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
    policy: AnalyticsPolicy, epoch: EpochInput, out: EpochOutput, frac_bits: int
) -> ReleaseShares:
    """Select the policy-approved items of an epoch and lay them out."""
    p = out.plan
    fields = _window_fields(policy)
    mm_pos = {int(s): i for i, s in enumerate(p.minmax)}
    windows, alerts, parts, alert_parts = [], [], [], []
    starts = np.concatenate([[0], np.cumsum(p.n)[:-1]])
    for i, s in enumerate(epoch.streams):
        ok = int(p.n[i]) >= policy.min_count
        row: dict[str, Any] = {"gateway": s.gateway, "sensor": s.sensor, "count": int(p.n[i])}
        row["fields"] = fields if ok else []
        windows.append(row)
        if not ok:
            continue
        values = {"sum": out.s1[i], "sumsq": out.s2[i]}
        if "min" in fields or "max" in fields:
            values |= {"min": out.mn[mm_pos[i]], "max": out.mx[mm_pos[i]]}
        parts.append(np.array([values[f] for f in fields], dtype=np.uint64))
        sl = slice(int(starts[i]), int(starts[i] + p.n[i]))
        masks = {"limit": p.limit_mask[sl], "rate": p.rate_mask[sl], "zscore": p.zmask[sl]}
        flags = {"limit": out.limit[sl], "rate": out.rate[sl], "zscore": out.zscore[sl]}
        for name, item in _DETECTORS:
            m = masks[name]
            if policy.allows(item) and m.any():
                ts = s.timestamps_ns[m]
                alerts.append(
                    {
                        "gateway": s.gateway,
                        "sensor": s.sensor,
                        "detector": name,
                        "n": int(ts.size),
                        "ts": base64.b64encode(ts.astype("<i8").tobytes()).decode(),
                    }
                )
                alert_parts.append(flags[name][m])
    parts += alert_parts
    fleet, fleet_dev = _fleet_release(policy, epoch, out, parts)
    layout = {
        "epoch_ns": epoch.start_ns,
        "window_ns": policy.window_ns,
        "frac_bits": frac_bits,
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
        n = int(out.fleet_n[k])
        ok = n >= policy.min_count
        fleet.append({"class": name, "count": n, "fields": ["sum", "sumsq"] if ok else []})
        if ok:
            parts.append(np.array([out.fleet_s1[k], out.fleet_s2[k]], dtype=np.uint64))
    for i, s in enumerate(epoch.streams):
        k = int(p.cls[i])
        if k >= 0 and int(out.fleet_n[k]) >= policy.min_count and p.n[i] >= policy.min_count:
            dev.append({"gateway": s.gateway, "sensor": s.sensor, "class": p.classes[k]})
            parts.append(out.fleet_dev[i : i + 1])
    return fleet, dev


@dataclass(frozen=True, slots=True)
class Decoded:
    """Released rows of one epoch, ready to store."""

    windows: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    fleet: list[dict[str, Any]]


def _moments(total: int, total_sq: int | None, n: int, codec: FixedPoint) -> tuple[float, float]:
    mean = codec.decode_scalar(total) / n
    if total_sq is None:
        return mean, math.nan
    var = codec.decode_scalar(total_sq) / n - mean * mean
    return mean, math.sqrt(max(var, 0.0))


def _flag(v: int) -> bool:
    if v not in (0, 1):
        raise AnalyticsError("a reconstructed flag is not 0/1: the parties' shares disagree")
    return v == 1


def _decode_alerts(layout: dict[str, Any], values: RingArray, pos: int) -> list[dict[str, Any]]:
    flagged: list[dict[str, Any]] = []
    for a in layout["alerts"]:
        n = int(a["n"])
        bits = values[pos : pos + n]
        pos += n
        if not np.all(bits <= 1):
            raise AnalyticsError("a reconstructed flag is not 0/1: the parties' shares disagree")
        ts = np.frombuffer(base64.b64decode(a["ts"], validate=True), dtype="<i8")
        if ts.size != n:
            raise AnalyticsError("alert timestamps do not match their count")
        flagged.extend(
            {
                "gateway": a["gateway"],
                "sensor": a["sensor"],
                "ts_ns": int(t),
                "detector": a["detector"],
            }
            for t in ts[bits == 1]
        )
    return flagged


def expected_length(layout: dict[str, Any]) -> int:
    """Length of the share vector a layout describes."""
    n = sum(len(w["fields"]) for w in layout["windows"])
    n += sum(int(a["n"]) for a in layout["alerts"])
    n += sum(len(f["fields"]) for f in layout["fleet"])
    return n + len(layout["fleet_dev"])


def decode(layout: dict[str, Any], values: RingArray) -> Decoded:
    """Turn a reconstructed vector into window, alert and fleet rows."""
    if len(values) != expected_length(layout):
        raise AnalyticsError("release vector length does not match its layout")
    codec = FixedPoint(int(layout["frac_bits"]))
    start = int(layout["epoch_ns"])
    n_win = sum(len(w["fields"]) for w in layout["windows"])
    n_alert = sum(int(a["n"]) for a in layout["alerts"])
    it = iter(int(v) for v in values[:n_win])
    windows = []
    for w in layout["windows"]:
        row: dict[str, Any] = {
            "gateway": w["gateway"],
            "sensor": w["sensor"],
            "start_ns": start,
            "count": w["count"],
        }
        got = {f: next(it) for f in w["fields"]}
        if "sum" in got:
            mean, std = _moments(got["sum"], got.get("sumsq"), w["count"], codec)
            row["mean"] = mean
            if "sumsq" in got:
                row["std"] = std
        for f in ("min", "max"):
            if f in got:
                row[f] = codec.decode_scalar(got[f])
        windows.append(row)
    alerts = _decode_alerts(layout, values, n_win)
    it = iter(int(v) for v in values[n_win + n_alert :])
    fleet = []
    for fl in layout["fleet"]:
        frow: dict[str, Any] = {"class": fl["class"], "start_ns": start, "count": fl["count"]}
        if fl["fields"]:
            frow["mean"], frow["std"] = _moments(next(it), next(it), fl["count"], codec)
        fleet.append(frow)
    by_key = {(w["gateway"], w["sensor"]): w for w in windows}
    for d in layout["fleet_dev"]:
        by_key[(d["gateway"], d["sensor"])]["deviates_from_fleet"] = _flag(next(it))
    return Decoded(windows, alerts, fleet)


def check_layout(policy: AnalyticsPolicy, layout: dict[str, Any]) -> None:
    """Refuse a layout that releases more than ``policy`` allows (defence in depth)."""
    try:
        allowed = set(_window_fields(policy))
        for w in layout["windows"]:
            if w["fields"] and (w["count"] < policy.min_count or not set(w["fields"]) <= allowed):
                raise AnalyticsError(f"window {w['sensor']!r} releases beyond the policy")
        names = {name for name, item in _DETECTORS if policy.allows(item)}
        for a in layout["alerts"]:
            if a["detector"] not in names:
                raise AnalyticsError(f"detector {a['detector']!r} is not released by the policy")
        if (layout["fleet"] or layout["fleet_dev"]) and not policy.allows(Release.FLEET):
            raise AnalyticsError("fleet statistics are not released by the policy")
        for f in layout["fleet"]:
            if f["fields"] and f["count"] < policy.min_count:
                raise AnalyticsError(f"fleet class {f['class']!r} has too few readings")
    except (KeyError, TypeError) as exc:
        raise AnalyticsError(f"malformed release layout: {exc}") from exc
