"""bench.scale without processes: the result comparison across K, the JSON shape, the map.

The benchmark's timing is never asserted; these are its pure parts (and the
shard map helper it shares with tests/cloud/test_cloud_shards.py).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bench.scale import KS, SCALE_POLICY, differences, sizes, summarise
from cloud_tecc.analytics.policy import policy_from_mapping
from demo.devstack.shards import shard_map, split_segments
from tecc_contract.envelope import SensorSegment

WINDOW = {"gateway": "gw0", "sensor": "s4", "start_ns": 10, "count": 5, "mean": 1.5}
FLAG = {"gateway": "gw0", "sensor": "s4", "ts_ns": 12, "detector": "zscore", "incident": 1}
FLEET = {"class": "fleet-a", "start_ns": 10, "count": 20, "mean": 2.0, "std": 0.5}


def _results(**over: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    base = {"windows": [WINDOW], "alerts": [FLAG, FLAG], "fleet": [FLEET]}
    return {**base, **over}


def test_equal_results_ignore_arrival_incident_and_shard() -> None:
    other = _results(
        windows=[{**WINDOW, "stored_ns": 99, "shard": 3}],
        alerts=[{**FLAG, "incident": 7}, {**FLAG, "incident": 8}],
    )
    assert differences(_results(), other) == {"windows": 0, "alerts": 0, "fleet": 0}


def test_every_kind_of_difference_is_counted() -> None:
    other = _results(
        windows=[{**WINDOW, "mean": 1.5000001}],  # a value
        alerts=[FLAG],  # a duplicate flag of one timestamp missing
        fleet=[FLEET, {**FLEET, "class": "fleet-b"}],  # a row more
    )
    assert differences(_results(), other) == {"windows": 2, "alerts": 1, "fleet": 1}
    assert differences(_results(), _results(alerts=[])) == {"windows": 0, "alerts": 2, "fleet": 0}


def _fig(cpu: float, rate: int, rows: int = 3) -> dict[str, Any]:
    return {
        "readings": 1000,
        "cpu_us_per_reading": cpu,
        "readings_per_s": rate,
        "rows": {"windows": rows, "alerts": 0, "fleet": 0},
    }


def test_summary_has_the_figures_of_every_k_and_the_ratios() -> None:
    figs = {1: _fig(8.0, 50_000), 2: _fig(9.0, 40_000), 4: _fig(10.0, 25_000)}
    same = {"windows": 0, "alerts": 0, "fleet": 0}
    out = summarise(figs, {2: same, 4: same})
    json.dumps(out)  # one JSON object
    for k in KS:
        assert {f"cpu_us_per_reading_k{k}", f"readings_per_s_k{k}"} <= set(out)
    assert out["cpu_ratio_k2_k1"] == 1.125
    assert out["cpu_ratio_k4_k1"] == 1.25
    assert out["readings_per_s_ratio_k4_k1"] == 0.5
    assert out["results_identical"] is True
    assert summarise(figs, {2: same, 4: {**same, "fleet": 1}})["results_identical"] is False
    # nothing released at all is no evidence of equal results
    empty = {k: _fig(8.0, 1, rows=0) for k in KS}
    assert summarise(empty, {2: same, 4: same})["results_identical"] is False


def test_the_default_map_keeps_a_fleet_class_in_one_shard_and_loads_every_shard() -> None:
    policy = policy_from_mapping(SCALE_POLICY)
    gateways, sensors, _, _ = sizes(quick=True)
    streams = [(f"gw{g}", f"s{s}") for g in range(gateways) for s in range(sensors)]
    for k in KS:
        smap = shard_map(policy, k)
        assert {smap(g, s) for g, s in streams} == set(range(k))
        for cls in ("s0", "s1", "s2", "s3"):
            assert len({smap(g, cls) for g in (f"gw{i}" for i in range(50))}) == 1
    assert {shard_map(policy, 1)(g, s) for g, s in streams} == {0}
    spread = shard_map(policy, 4)
    assert len({spread(f"gw{i}", "s9") for i in range(50)}) == 4  # not a fleet class


def test_a_batch_splits_into_whole_segments_per_shard() -> None:
    smap = shard_map(policy_from_mapping(SCALE_POLICY), 4)
    ts = np.arange(3, dtype=np.int64)
    segs = [SensorSegment(f"s{i}", ts, ts.astype(np.float64)) for i in range(10)]
    parts = split_segments("gw0", segs, smap)
    assert sorted(s.sensor_id for p in parts.values() for s in p) == sorted(
        s.sensor_id for s in segs
    )
    assert all(smap("gw0", s.sensor_id) == k for k, p in parts.items() for s in p)
    assert list(parts) == sorted(parts)
