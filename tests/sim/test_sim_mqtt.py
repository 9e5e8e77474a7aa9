"""End to end over a real mosquitto: values, ground truth and determinism seen by a subscriber."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from firmware_sim.config import PayloadFormat, SimConfig
from firmware_sim.groundtruth import read_ground_truth
from firmware_sim.line import simulate
from firmware_sim.payloads import decode_plain
from firmware_sim.runner import RunStats, run_simulation
from tests.sim.simhelpers import START, Collector, ConfigFactory, Received, expected_messages
from tests.support.mosquitto import Broker, start_mosquitto

pytestmark = pytest.mark.mqtt

LINE = """
line: l1
seed: {seed}
speed: 25
duration_s: 20
groundtruth: {gt}
mqtt: {{host: 127.0.0.1, port: {port}, qos: 1, batch_size: 10}}
machines:
  - name: m1
    transport: mqtt
    fixed_state: run
    sensors:
      - {{name: p, kind: pressure, offset: 20, load_gain: 100, noise_std: 2.5, lag_s: 0}}
      - {{name: v, kind: vibration, payload: plain}}
      - {{name: t, kind: temperature, payload: json_batch}}
scenario:
  anomalies:
    - {{kind: spike, sensor: l1.m1.p, start_s: 3, magnitude: 30}}
    - {{kind: garbage, sensor: l1.m1.p, start_s: 12, duration_s: 1}}
    - {{kind: dropout, sensor: l1.m1.v, start_s: 5, duration_s: 2}}
    - {{kind: noise_burst, sensor: l1.m1.v, start_s: 9, duration_s: 2, magnitude: 2}}
    - {{kind: sensor_failure, sensor: l1.m1.t, start_s: 8, duration_s: 2}}
    - {{kind: level_shift, sensor: l1.m1.t, start_s: 14, duration_s: 3, magnitude: 10}}
"""


async def run_and_collect(config: SimConfig, broker: Broker) -> Received:
    """Run the line against the broker with a subscriber attached from the start."""
    offline = simulate(config, start=START, duration_s=20)
    async with Collector(broker.host, broker.port, "site/#") as collector:
        await run_simulation(config, start=START)
        await collector.wait_for(expected_messages(config, offline.samples))
    return collector.received


def readings(
    received: Received, config: SimConfig, sensor: str
) -> list[tuple[float, float | None]]:
    """Valid (ts, value) pairs a subscriber decoded for ``sensor`` (value None = failed).

    Plain payloads carry no timestamp, so their ts is NaN.
    """
    spec = config.sensor(sensor)
    topic = spec.topic("site")
    if spec.payload is not PayloadFormat.PLAIN:
        out: list[tuple[float, float | None]] = []
        for r in received.json_readings(topic):
            value = r["value"]
            ts = r["ts"]
            assert isinstance(ts, float)
            if value is None:
                out.append((ts, None))
                continue
            number = float(str(value))
            if math.isfinite(number) and spec.low <= number <= spec.high:
                out.append((ts, number))
        return out
    return [(math.nan, decode_plain(p)) for p in received.payloads[topic]]


async def test_stream_ground_truth_and_statistics(
    make_config: ConfigFactory, broker: Broker, tmp_path: Path
) -> None:
    """A subscriber sees the exact model stream, anomalies only where ground truth says."""
    gt = tmp_path / "truth.jsonl"
    config = make_config(LINE.format(seed=42, port=broker.port, gt=gt))
    received = await run_and_collect(config, broker)
    offline = simulate(config, start=START, duration_s=20)
    clean = simulate(config, start=START, duration_s=20, clean=True)
    truth = read_ground_truth(gt)
    assert sorted(truth, key=lambda r: r.start) == sorted(offline.records, key=lambda r: r.start)
    assert {r.kind for r in truth} == {
        "spike",
        "garbage",
        "dropout",
        "noise_burst",
        "sensor_failure",
        "level_shift",
    }

    for sensor in ("l1.m1.p", "l1.m1.t"):
        got = readings(received, config, sensor)
        want = [
            (s.ts, None if s.status.value != "Good" else s.value)
            for s in offline.samples[sensor]
            if not s.garbage
        ]
        assert got == want, sensor
        clean_by_ts = {s.ts: s.value for s in clean.samples[sensor]}
        windows = [r for r in truth if r.sensor == sensor]
        for ts, value in got:
            inside = any(r.covers(sensor, ts) for r in windows)
            assert (value != clean_by_ts[ts]) == inside, (sensor, ts)

    plain = [v for _, v in readings(received, config, "l1.m1.v")]
    assert plain == [s.value for s in offline.samples["l1.m1.v"]]
    assert len(plain) == 200 - 20

    p_topic = config.sensor("l1.m1.p").topic("site")
    malformed = 0
    for raw in received.payloads[p_topic]:
        try:
            obj = json.loads(raw)
            value = float(obj["value"])
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            malformed += 1
            continue
        if not (math.isfinite(value) and 0 <= value <= 250):
            malformed += 1
    assert malformed == 10

    windows = [r for r in truth if r.sensor == "l1.m1.p"]
    normal = np.array(
        [
            v
            for ts, v in readings(received, config, "l1.m1.p")
            if not any(r.covers("l1.m1.p", ts) for r in windows)
        ]
    )
    assert normal.size == 189
    assert abs(normal.mean() - 80.0) < 4 * 2.5 / math.sqrt(normal.size)
    assert 0.8 * 2.5 < normal.std() < 1.2 * 2.5


async def test_same_seed_same_stream_over_the_wire(
    make_config: ConfigFactory, broker: Broker, tmp_path: Path
) -> None:
    """Two runs with the same seed publish byte-identical payloads; another seed does not."""
    runs = []
    for i, seed in enumerate((42, 42, 43)):
        config = make_config(LINE.format(seed=seed, port=broker.port, gt=tmp_path / f"gt{i}.jsonl"))
        runs.append(await run_and_collect(config, broker))
    assert runs[0].payloads == runs[1].payloads
    assert runs[0].payloads != runs[2].payloads
    assert (tmp_path / "gt0.jsonl").read_bytes() == (tmp_path / "gt1.jsonl").read_bytes()


async def test_broker_restart_is_survived(
    make_config: ConfigFactory, broker: Broker, tmp_path: Path
) -> None:
    """The broker dies mid-run and comes back: the run finishes, counts lost messages, resumes."""
    config = make_config(
        LINE.format(seed=1, port=broker.port, gt=tmp_path / "gt.jsonl").replace(
            "speed: 25\nduration_s: 20", "speed: 10\nduration_s: 40"
        )
    )
    stats = RunStats()
    run = asyncio.create_task(run_simulation(config, start=START, stats=stats))
    async with Collector(broker.host, broker.port, "site/#") as first:
        await first.wait_for(20)
    broker.stop()
    await asyncio.sleep(0.5)
    with start_mosquitto(tmp_path / "again", port=broker.port) as again:
        async with Collector(again.host, again.port, "site/#") as second:
            await second.wait_for(20)
            await run
    assert stats.lost > 0
    assert stats.samples == 3 * 400 - 20
    assert len(read_ground_truth(tmp_path / "gt.jsonl")) == 6
