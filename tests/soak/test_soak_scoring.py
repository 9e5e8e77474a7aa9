"""The soak oracle itself (bench/soak.py classification and timeliness), no processes.

Hand-made published readings, released windows and epoch store times, first
exactly right, then with one fault at a time: a lost window, a duplicate, a
late and a never-released window, and readings inside a broker-kill interval
(excluded and reported apart, never hidden in the main class).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.e2e import RANGES
from bench.soak_ha import _blame
from bench.soak_score import DEADLINE_S, Observed, _classify, _Ctx, _timeliness, shard_delays
from demo.layout import SimSensor
from firmware_sim.sample import Sample

T = 1_800_000_000.0
OFFSET = 0.25  # wall clock minus simulated time
CTX = _Ctx(start=T, t0=T + 2, t_end=T + 8, ws=1.0, wn=10**9, offset=OFFSET, starts={})
MQTT = SimSensor("l1.m1.temp", "m1", "C", 0.0, 100.0, "mqtt", "t/temp", "json", 1)
QOS0 = SimSensor("l1.m1.vib", "m1", "mm/s", 0.0, 100.0, "mqtt", "t/vib", "json", 0)
SENSORS = {"gw1": [MQTT, QOS0]}


def _samples(sid: str) -> list[Sample]:
    return [Sample(sid, i, T + i / 10, 50.0) for i in range(100)]


def _windows(sid: str) -> list[dict[str, Any]]:
    return [{"sensor": sid, "start_ns": round((T + k) * 1e9), "count": 10} for k in range(10)]


def _score(windows: list[dict[str, Any]], obs: Observed | None = None) -> dict[str, Any]:
    for s in (MQTT, QOS0):
        RANGES[s.sensor] = (s.low, s.high)
    samples = {s.sensor: _samples(s.sensor) for s in (MQTT, QOS0)}
    return {
        k: dict(v) for k, v in _classify(CTX, SENSORS, obs or Observed(), samples, windows).items()
    }


def test_exact_windows_score_clean() -> None:
    """Counted == published over the 6 scored windows; QoS 0 is reported apart."""
    c = _score(_windows(MQTT.sensor) + _windows(QOS0.sensor))
    assert c["counted"] == {"published": 60, "counted": 60, "lost": 0, "duplicated": 0}
    assert c["qos0"]["published"] == 60


def test_lost_window_and_duplicate_are_counted_and_named() -> None:
    """A window released with 8 of 10 readings is 2 lost; one with 11 is 1 duplicated."""
    ws = _windows(MQTT.sensor)
    ws[3]["count"] = 8
    ws[5]["count"] = 11
    c = _score(ws)["counted"]
    assert (c["lost"], c["duplicated"]) == (2, 1)
    assert (c[f"{MQTT.sensor}@+3s"], c[f"{MQTT.sensor}@+5s"]) == (-2, 1)


def test_window_never_released_is_lost() -> None:
    """A scored window missing from the API loses all its readings."""
    ws = [w for w in _windows(MQTT.sensor) if w["start_ns"] != round((T + 4) * 1e9)]
    assert _score(ws)["counted"]["lost"] == 10


def test_broker_kill_interval_is_excluded_not_hidden() -> None:
    """Windows overlapping a broker kill (with its margins) move to their own class."""
    obs = Observed(kills=[(T + 6 + OFFSET, "mosquitto", "kill")])
    ctx_starts = {"mosquitto": [T - 10, T + 6.5 + OFFSET]}
    ws = _windows(MQTT.sensor)
    ws[6]["count"] = 0  # lost in the kill: excluded by contract
    for s in (MQTT, QOS0):
        RANGES[s.sensor] = (s.low, s.high)
    ctx = _Ctx(T, T + 2, T + 8, 1.0, 10**9, OFFSET, ctx_starts)
    classes = _classify(ctx, {"gw1": [MQTT]}, obs, {MQTT.sensor: _samples(MQTT.sensor)}, ws)
    # kill at +6 s: excluded from 6 - 3 (autosave margin) to 6.5 + 5 (reconnect margin)
    assert classes["counted"]["published"] == 10  # only window +2 s remains
    assert classes["counted"]["lost"] == 0
    assert classes["mqtt_broker_kill_interval"]["lost"] == 10


def test_timeliness_counts_late_and_unreleased_windows() -> None:
    """On time within the deadline; late still released; a missing window neither."""

    def stored(k: int, after_end_s: float) -> dict[str, int]:
        return {
            "start_ns": round((T + k) * 1e9),
            "stored_ns": round((T + k + 1 + OFFSET + after_end_s) * 1e9),
        }

    epochs = [stored(k, 1.0) for k in (2, 3, 4, 6)] + [stored(5, DEADLINE_S + 1)]
    availability, scored, released, _ = _timeliness(CTX, Observed(), epochs)
    assert scored == 6  # windows +2 s … +7 s
    assert released == 5  # +7 s was never stored
    assert availability == round(4 / 6, 4)  # +5 s was late


def test_sharded_windows_are_on_time_only_when_every_shard_is() -> None:
    """Two shards: a window counts once, on time only if both shards' epochs were stored in time;
    a late shard-1 window is blamed on the last kill before its deadline."""

    def stored(shard: int, k: int, after_end_s: float) -> dict[str, int]:
        return {
            "shard": shard,
            "start_ns": round((T + k) * 1e9),
            "stored_ns": round((T + k + 1 + OFFSET + after_end_s) * 1e9),
        }

    epochs = [stored(0, k, 1.0) for k in range(2, 8)]
    epochs += [stored(1, k, 1.0) for k in (2, 3, 5, 6)] + [stored(1, 4, DEADLINE_S + 2)]
    delays = shard_delays(CTX, epochs, 2)
    assert len(delays) == 12  # 6 windows x 2 shards
    assert delays[(1, int(T) + 7)] is None  # never released
    assert abs((delays[(1, int(T) + 4)] or 0.0) - (DEADLINE_S + 2)) < 1e-3
    availability, scored, released, _ = _timeliness(CTX, Observed(), epochs, shards=2)
    assert (scored, released) == (6, 5)
    assert availability == round(4 / 6, 4)
    kills = [(T + 1 + OFFSET, "frontend", "party0-ingest0"), (T + 4 + OFFSET, "nats", "n1")]
    streams = Counter({0: 3, 1: 2})
    late, worst, listed = _blame(delays, streams, kills, CTX.ws, OFFSET)
    assert late == {"nats": 4}  # two late shard-1 windows of 2 streams each, after the node kill
    assert worst == {"frontend": 1.0, "nats": DEADLINE_S + 2}
    assert [row[:4] for row in listed] == [
        [1, int(T) + 4, DEADLINE_S + 2, "nats"],
        [1, int(T) + 7, None, "nats"],
    ]
