"""Modbus TCP and Sparkplug B lines of the simulator through the whole pipeline.

``configs/sim-modbus.yaml`` and ``configs/sim-sparkplug.yaml`` run under the
same launcher as ``./tecc demo --sim-config FILE`` (``demo.pipeline``, every
service a real process): the simulator serves a Modbus TCP device or publishes
Sparkplug B edge nodes, the generated gateway configs read them, and every
sensor of the line must show up in windows released by the output service,
on both gateways.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from demo.devstack.deployment import auth_headers
from demo.layout import SimSensor, assign_sensors, gateway_config
from demo.pipeline import ROOT, Pipeline
from demo.services import free_port
from gateway.config_yaml import parse_config

pytestmark = [pytest.mark.processes, pytest.mark.mqtt, pytest.mark.tpm, pytest.mark.slow]
CONFIGS = {
    "modbus": ROOT / "configs" / "sim-modbus.yaml",
    "sparkplug": ROOT / "configs" / "sim-sparkplug.yaml",
}


def _sensors(config: Path) -> list[SimSensor]:
    out = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "sensors", "--config", str(config)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    return [SimSensor.from_json(o) for o in json.loads(out)]


@pytest.mark.parametrize("transport", sorted(CONFIGS))
def test_generated_gateway_config_reads_the_plant_transport(tmp_path: Path, transport: str) -> None:
    """The demo's gateway config for the line loads and has the matching source.

    Fails on the code before this change: ``transport: modbus`` / ``sparkplug``
    were not simulator transports, and the demo wrote no source for them.
    """
    sensors = _sensors(CONFIGS[transport])
    assert {s.transport for s in sensors} == {transport}
    for gw, mine in assign_sensors(sensors, 2).items():
        doc = gateway_config(
            gw,
            mine,
            state_dir=tmp_path / gw,
            mqtt_port=1883,
            opcua_port=4840,
            tpm_port=2321,
            http_port=8000,
            clusters=[(0, "https://127.0.0.1:1", "party0"), (1, "https://127.0.0.1:2", "party1")],
            platforms={"p": "00" * 32},
            measurement="00" * 32,
            modbus_port=1502,
        )
        cfg = parse_config(yaml.safe_load(yaml.safe_dump(doc)), base=tmp_path)
        ids = {s.sensor for s in mine}
        if transport == "modbus":
            [regs] = cfg.modbus
            assert regs.sensors() == ids
            assert cfg.mqtt == ()
        else:
            [src] = cfg.mqtt
            assert {r.format.value for r in src.topics} == {"sparkplug_b"}
            assert {r.filter.split("/")[3] for r in src.topics} == {
                s.machine.split(".")[1] for s in mine
            }


async def _windows(url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(url + "/windows", headers=auth_headers(url)) as r,
    ):
        r.raise_for_status()
        rows: list[dict[str, Any]] = await r.json()
        return rows


@pytest.mark.parametrize("transport", sorted(CONFIGS))
async def test_plant_line_releases_windows_for_every_sensor(tmp_path: Path, transport: str) -> None:
    """Every Modbus / Sparkplug B sensor of the shipped line is counted in released windows.

    Fails on the code before this change: the simulator refused the config
    (unknown transport), so the pipeline never started.
    """
    config = CONFIGS[transport]
    want = {s.sensor for s in _sensors(config)}
    async with Pipeline(
        tmp_path / "state", gateways=2, sim_config=config, dashboard_port=free_port()
    ) as p:
        assert p.urls is not None
        deadline = time.monotonic() + 60
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = await _windows(p.urls.output_api)
            if {r["sensor"] for r in rows if r["count"] > 0} == want:
                break
            await asyncio.sleep(1.0)
    seen = {r["sensor"] for r in rows if r["count"] > 0}
    assert seen == want, (sorted(want - seen), rows[-5:])
    assert {r["gateway"] for r in rows} == {"gw1", "gw2"}
