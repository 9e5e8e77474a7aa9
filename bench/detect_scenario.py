"""The accelerated line of ``bench.detect``: normal operation, random anomalies, ground truth.

The machines and sensors are those of configs/demo/sim.yaml. Their *normal*
behaviour is made long-run realistic with the simulator's planned operation
(:class:`firmware_sim.config.Operations`): a cold start (every lagged
sensor warms up), the random idle/run/load state machine (load changes every
20–45 s), shift changes (an idle break every ``shift_s``), one maintenance
stop at load 0 per machine, and a daily cycle on the temperatures compressed
to ``day_s`` (the run covers whole "days"). Anomalies of every kind are drawn
at random times (one seed), at least 90 s apart on one sensor, with random
magnitudes scaled to the sensor's detector thresholds — some below them.

:func:`detectable` decides, from the policy's configured thresholds and the
sensor's declared noise only (never from what the pipeline flagged), whether
an anomaly can be seen at all; the bench scores recall on those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cloud_tecc.analytics.policy import AnalyticsPolicy
from firmware_sim.config import SimConfig
from firmware_sim.config_yaml import to_runtime
from firmware_sim.errors import SimConfigError
from firmware_sim.groundtruth import GroundTruthRecord
from firmware_sim.scenario import AnomalyKind, AnomalySpec
from firmware_sim.schema import SimFile
from tecc_contract.schema import convert

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "configs" / "demo" / "sim.yaml"
KINDS = ("spike", "level_shift", "drift", "stuck", "noise_burst", "dropout", "sensor_failure")
KINDS_ALL = (*KINDS, "garbage")
#: Anomaly kinds whose readings never reach the analytics (the gateway drops or rejects them).
NOT_ANALYSED = frozenset({"dropout", "sensor_failure", "garbage"})


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One injected anomaly with its ground truth and whether the detectors can see it."""

    sensor: str
    kind: str
    start: float
    end: float
    magnitude: float
    detectable: bool
    why: str


def line_config(seed: int, duration_s: float, start: float) -> SimConfig:
    """The demo line with planned operation, a compressed day and a random scenario."""
    doc: dict[str, Any] = yaml.safe_load(SIM.read_text())
    day = max(600.0, duration_s / 2)
    shift = max(300.0, duration_s / 4)
    rng = np.random.default_rng([seed, 1])
    for m in doc["machines"]:
        stop = float(rng.uniform(0.3, 0.8) * duration_s)
        m["operations"] = {
            "cold_start": True,
            "shift_s": shift,
            "shift_break_s": 60.0,
            "stops": [{"start_s": stop, "duration_s": min(300.0, duration_s / 10)}],
        }
        for s in m["sensors"]:
            if s.get("kind") == "temperature":
                s["daily_period_s"] = day
                s["daily_amplitude"] = 4.0
    doc["seed"] = seed
    doc["start_time"] = start
    doc["scenario"] = {"anomalies": []}
    cfg = to_runtime(convert(doc, SimFile, source="bench.detect", error=SimConfigError))
    return cfg.with_changes(anomalies=_anomalies(cfg, seed, duration_s))


def _anomalies(cfg: SimConfig, seed: int, duration_s: float) -> tuple[AnomalySpec, ...]:
    rng = np.random.default_rng([seed, 2])
    sensors = cfg.sensors()
    count = max(len(KINDS_ALL) + 4, round(duration_s / 40))
    kinds = list(KINDS_ALL) + [str(k) for k in rng.choice(KINDS, count - len(KINDS_ALL))]
    rng.shuffle(kinds)
    busy: dict[str, list[tuple[float, float]]] = {}
    out = []
    for kind in kinds:
        for _ in range(50):
            s = sensors[int(rng.integers(len(sensors)))]
            dur = {"spike": 0.0, "stuck": float(rng.uniform(20, 60))}.get(
                kind, float(rng.uniform(5, 30))
            )
            t = float(rng.uniform(45, duration_s - dur - 45))
            taken = busy.setdefault(s.sensor_id, [])
            if all(t > b + 90 or t + dur < a - 90 for a, b in taken):
                taken.append((t, t + dur))
                break
        else:
            continue
        out.append(
            AnomalySpec(
                kind=AnomalyKind(kind),
                sensor=s.sensor_id,
                start_s=round(t, 1),
                duration_s=round(dur, 1),
                magnitude=_magnitude(kind, s, rng),
            )
        )
    return tuple(out)


def _magnitude(kind: str, spec: Any, rng: np.random.Generator) -> float:
    """A random magnitude around the scale of the sensor's normal variation."""
    span = float(spec.high - spec.low)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind in ("spike", "level_shift"):
        return sign * float(rng.uniform(0.02, 0.4)) * span
    if kind == "drift":
        return float(rng.uniform(0.05, 0.5)) * span
    if kind == "noise_burst":
        return float(rng.uniform(0.005, 0.1)) * span
    return 0.0


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def detectable(
    rec: GroundTruthRecord,
    cfg: SimConfig,
    policy: AnalyticsPolicy,
    values: np.ndarray,
    before: float | None,
) -> tuple[bool, str]:
    """Whether an anomaly exceeds a configured detector threshold (with a noise margin).

    ``values`` are the readings the anomaly produced (those inside [start, end])
    and ``before`` the reading just before it: a spike or shift is measured as
    the step it really made (the simulator clips to the range).
    The rules, per detector (docs/BENCHMARKS.md, "detect"):

    * limits: a reading beyond a limit by 3 noise std;
    * rate: a spike or level shift whose step exceeds 1.25·max_delta + 3·√2·noise;
      a noise burst expected to give ≥ 3 steps above max_delta;
    * z-score: a spike or level shift above 1.5·k·σ_eff (σ_eff² = noise² +
      min_sigma² + step²), a noise burst expected to give ≥ 3 readings above
      k·σ_eff among its first ``min_baseline`` readings;
    * flatline: a stuck span of ≥ span + one window of readings, on a sensor
      whose noise std is ≥ 3·min_std;
    * dropout, sensor failure, garbage: never (no value reaches the clusters).
    """
    if rec.kind in NOT_ANALYSED:
        return False, "no value reaches the analytics"
    spec = cfg.sensor(rec.sensor)
    noise = spec.signal.noise_std
    lim = policy.limit_for(rec.sensor)
    if (
        lim is not None
        and values.size
        and (values.max() > lim.high + 3 * noise or values.min() < lim.low - 3 * noise)
    ):
        return True, "limit"
    rate = policy.rate_for(rec.sensor)
    z = policy.zscore
    sig = math.sqrt(noise**2 + z.min_sigma**2 + policy.resolution_for(rec.sensor) ** 2)
    mag = abs(rec.magnitude)
    n = max(rec.samples, 1)
    if rec.kind in ("spike", "level_shift"):
        mag = abs(float(values[0]) - before) if before is not None and values.size else 0.0
        if rate is not None and mag > 1.25 * rate.max_delta + 3 * math.sqrt(2) * noise:
            return True, "rate"
        if mag > 1.5 * z.k * sig:
            return True, "zscore"
        return False, "below the rate and z-score thresholds"
    if rec.kind == "noise_burst":
        expect = min(n, z.min_baseline) * 2 * _phi(-z.k * sig / max(mag, 1e-12))
        if rate is not None:
            expect += n * 2 * _phi(-rate.max_delta / (math.sqrt(2) * max(mag, 1e-12)))
        return (True, "noise") if expect >= 3 else (False, "burst below the thresholds")
    if rec.kind == "stuck":
        fl = policy.flatline_for(rec.sensor)
        if fl is None:
            return False, "no flatline rule"
        need = fl.span + policy.window_s * spec.rate_hz
        if n >= need and noise >= 3 * fl.min_std:
            return True, "flatline"
        return False, "too short for the flatline span"
    return False, "drift stays inside the limits"
