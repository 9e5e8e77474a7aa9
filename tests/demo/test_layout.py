"""Sensor split between gateways and the gateway configs the pipeline writes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud_tecc.analytics.policy import policy_from_mapping
from demo.feed import ReplayFeed
from demo.layout import (
    SimSensor,
    assign_sensors,
    class_scale_ranges,
    gateway_config,
    load_policy,
    sensor_scales,
)
from demo.pipeline import DEMO_POLICY, DEMO_SIM, ROOT
from gateway.config_yaml import load_config
from tecc_contract.scale import Scale


def _sensors() -> list[SimSensor]:
    out = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "sensors", "--config", str(DEMO_SIM)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    return [SimSensor.from_json(o) for o in json.loads(out)]


def test_two_gateways_split_by_transport_and_share_every_class() -> None:
    """gw1 gets the OPC-UA sensors, gw2 the MQTT ones; each class appears on both."""
    split = assign_sensors(_sensors(), 2)
    assert {s.transport for s in split["gw1"]} == {"opcua"}
    assert {s.transport for s in split["gw2"]} == {"mqtt"}
    assert len(split["gw1"]) + len(split["gw2"]) == 15
    cls = [{s.sensor.rsplit(".", 1)[1] for s in split[g]} for g in ("gw1", "gw2")]
    assert cls[0] & cls[1] >= {"bearing_temp", "hydraulic_pressure", "spindle_speed"}


def test_three_gateways_one_machine_each_and_too_many_refused() -> None:
    """Machines go round-robin; more gateways than machines split sensors; than sensors: error."""
    split = assign_sensors(_sensors(), 3)
    assert [len({s.machine for s in split[g]}) for g in ("gw1", "gw2", "gw3")] == [1, 1, 1]
    four = assign_sensors(_sensors(), 4)
    assert [len(four[f"gw{i}"]) for i in range(1, 5)] == [4, 4, 4, 3]
    with pytest.raises(ValueError, match="at most 15 gateways"):
        assign_sensors(_sensors(), 16)


@pytest.mark.parametrize("transport", ["mqtt", "opcua"])
def test_single_transport_lines_give_every_gateway_sensors(transport: str) -> None:
    """An MQTT-only or OPC-UA-only line still feeds both gateways (machines round-robin).

    Fails on the code before this change: two gateways always split by
    transport, leaving one gateway without sensors (its config is refused).
    """
    only = [dataclasses.replace(s, transport=transport) for s in _sensors()]
    split = assign_sensors(only, 2)
    assert all(split[g] for g in ("gw1", "gw2"))
    assert sum(len(v) for v in split.values()) == 15


def test_written_gateway_config_loads(tmp_path: Path) -> None:
    """The generated document passes the gateway's own config validation."""
    for gw, sensors in assign_sensors(_sensors(), 2).items():
        doc = gateway_config(
            gw,
            sensors,
            state_dir=tmp_path / gw,
            mqtt_port=1883,
            opcua_port=4840,
            tpm_port=2321,
            http_port=9100,
            clusters=[(0, "https://127.0.0.1:1", "party0"), (1, "https://127.0.0.1:2", "party1")],
            platforms={"k": "00" * 32},
            measurement="11" * 32,
        )
        path = tmp_path / f"{gw}.yaml"
        path.write_text(yaml.safe_dump(doc))
        cfg = load_config(path)
        assert sorted(cfg.sensors) == sorted(s.sensor for s in sensors)


def test_replay_feed_gateway_declares_its_sensor_as_backfill(tmp_path: Path) -> None:
    """A recorded-stamp replay: one MQTT sensor, declared in progress.backfill_sensors."""
    feed = ReplayFeed(
        Path("x.csv"), ReplayFeed.mqtt_sensor("hist.m1.temp", unit="F", low=0, high=200)
    )
    assert feed.backfill
    assert feed.sensor.topic == "site/hist/m1/temp"
    doc = gateway_config(
        "gw1",
        [feed.sensor],
        state_dir=tmp_path / "gw1",
        mqtt_port=1883,
        opcua_port=4840,
        tpm_port=2321,
        http_port=9100,
        clusters=[(0, "https://127.0.0.1:1", "party0"), (1, "https://127.0.0.1:2", "party1")],
        platforms={"k": "00" * 32},
        measurement="11" * 32,
        backfill=[feed.sensor.sensor],
        backfill_idle_s=5.0,
    )
    path = tmp_path / "gw1.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    assert cfg.progress.backfill_sensors == ("hist.m1.temp",)
    assert cfg.progress.backfill_idle_s == 5.0
    argv = feed.argv(18830)
    assert argv[argv.index("--on-disorder") + 1] == "reject"
    assert "--rebase" not in argv
    assert "--respace" not in argv


def test_a_cluster_with_several_frontends_is_written_as_urls(tmp_path: Path) -> None:
    """The HA layout's clusters list every ingest frontend (``urls:``); one stays ``url:``."""
    feed = ReplayFeed(Path("x.csv"), ReplayFeed.mqtt_sensor("h.m1.t", unit="C", low=0, high=9))
    fronts = ["https://127.0.0.1:1", "https://127.0.0.1:3"]
    doc = gateway_config(
        "gw1",
        [feed.sensor],
        state_dir=tmp_path / "gw1",
        mqtt_port=1883,
        opcua_port=4840,
        tpm_port=2321,
        http_port=9100,
        clusters=[(0, fronts, "party0"), (1, ["https://127.0.0.1:2"], "party1")],
        platforms={"k": "00" * 32},
        measurement="11" * 32,
    )
    assert doc["clusters"][0] == {"index": 0, "urls": fronts, "service_id": "party0"}
    assert doc["clusters"][1] == {"index": 1, "url": "https://127.0.0.1:2", "service_id": "party1"}
    path = tmp_path / "gw1.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    assert [c.endpoints for c in cfg.clusters] == [tuple(fronts), ("https://127.0.0.1:2",)]


def test_demo_spindles_are_in_rpm_and_share_one_fleet_scale() -> None:
    """The demo line reports spindle speed in rpm (no krpm unit hack); its fleet class
    `speed` spans 0–12,000 and 0–24,000 rpm, so every spindle gets the union as
    scale_range (one scale per class) and the other classes keep their own range.

    Fails on the code before this change (spindles in krpm, no per-sensor scale).
    """
    sensors = _sensors()
    spindles = [s for s in sensors if s.sensor.endswith(".spindle_speed")]
    assert {s.unit for s in spindles} == {"rpm"}
    assert {(s.low, s.high) for s in spindles} == {(0.0, 12_000.0), (0.0, 24_000.0)}
    policy = policy_from_mapping(load_policy(DEMO_POLICY))
    ranges = {s.sensor: (s.low, s.high) for s in sensors}
    shared = class_scale_ranges(policy, ranges)
    assert shared == {s.sensor: (0.0, 24_000.0) for s in spindles}
    scales = sensor_scales(policy, ranges)
    assert len({scales[s.sensor] for s in spindles}) == 1
    assert scales["line1.press1.bearing_temp"] == Scale.for_range(0.0, 150.0, 12)
