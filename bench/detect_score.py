"""Event-level scoring of incidents against ground-truth anomalies (pure; ``bench.detect``).

An incident *matches* an anomaly when both concern the same sensor and the
incident's span [start, end] meets the anomaly's [start, end + grace]. The
grace covers what a detector legitimately does after an anomaly: the rate
and z-score detectors fire on the return to normal, the flatline flag comes
at the end of a window, and for ``grace_s`` (the z-score's baseline length)
readings are judged against a baseline that still holds anomalous readings.

* recall — detectable anomalies with at least one matching incident, over
  detectable anomalies (1.0 when there are none);
* precision — incidents matching any anomaly (detectable or not: an incident
  during a real fault is not false), over incidents (1.0 when there are none);
* false incidents per line-hour — incidents matching none, per simulated hour
  of the whole line;
* ``unmatched_without_grace`` — incidents that meet no anomaly's own span
  (grace 0), to show how much the grace decides;
* time to detect — per detected detectable anomaly, the earliest start of a
  matching incident minus the anomaly's start (0 if the incident began
  earlier); the median is ``ttd_s_p50``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Truth:
    """A ground-truth anomaly (seconds)."""

    sensor: str
    kind: str
    start: float
    end: float
    detectable: bool


@dataclass(frozen=True, slots=True)
class Found:
    """An incident as the output service stores it (seconds)."""

    sensor: str
    detector: str
    start: float
    end: float


def matches(inc: Found, a: Truth, grace_s: float) -> bool:
    """Same sensor and the incident's span meets [start, end + grace]."""
    return inc.sensor == a.sensor and inc.start <= a.end + grace_s and inc.end >= a.start


def score(
    truths: Sequence[Truth], found: Sequence[Found], *, hours: float, grace_s: float
) -> dict[str, Any]:
    """The event-level figures of ``bench.detect``."""
    if hours <= 0:
        raise ValueError("hours must be > 0")
    detectable = [a for a in truths if a.detectable]
    hit: list[Truth] = []
    ttd: list[float] = []
    missed: list[dict[str, Any]] = []
    for a in detectable:
        starts = [i.start for i in found if matches(i, a, grace_s)]
        if starts:
            hit.append(a)
            ttd.append(max(0.0, min(starts) - a.start))
        else:
            missed.append({"sensor": a.sensor, "kind": a.kind, "start": a.start})
    false = [i for i in found if not any(matches(i, a, grace_s) for a in truths)]
    strict = [i for i in found if not any(matches(i, a, 0.0) for a in truths)]
    by_detector: dict[str, int] = {}
    for i in found:
        by_detector[i.detector] = by_detector.get(i.detector, 0) + 1
    by_kind: dict[str, list[int]] = {}
    for a in detectable:
        row = by_kind.setdefault(a.kind, [0, 0])
        row[1] += 1
        row[0] += a in hit
    return {
        "recall": round(len(hit) / len(detectable), 4) if detectable else 1.0,
        "precision": round(1 - len(false) / len(found), 4) if found else 1.0,
        "false_incidents_per_line_hour": round(len(false) / hours, 3),
        "incidents": len(found),
        "false_incidents": len(false),
        "unmatched_without_grace": len(strict),
        "incidents_by_detector": dict(sorted(by_detector.items())),
        "anomalies": len(truths),
        "detectable_anomalies": len(detectable),
        "detected_anomalies": len(hit),
        "ttd_s_p50": round(float(np.median(ttd)), 2) if ttd else None,
        "recall_by_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_kind.items())},
        "missed": missed[:10],
        "false_examples": [
            {"sensor": i.sensor, "detector": i.detector, "start": i.start} for i in false[:10]
        ],
    }
