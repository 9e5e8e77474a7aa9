"""Replays and single-transport lines through the whole pipeline as real processes.

mosquitto, swtpm, the gateway, both parties, the dealer and the output
service run as separate processes (``demo.pipeline``); ``./tecc replay`` is
run as a command.
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
from demo.pipeline import DEMO_SIM, ROOT, Pipeline
from demo.replay import window_for
from demo.services import free_port
from firmware_sim.replay import Disorder, read_csv

pytestmark = [pytest.mark.processes, pytest.mark.mqtt, pytest.mark.tpm, pytest.mark.slow]
SAMPLE = Path(__file__).with_name("machine_temp_2013.csv")


def _replay(tmp_path: Path, *extra: str) -> dict[str, Any]:
    """Run ``python -m demo.replay`` (what ``./tecc replay`` execs); its JSON summary."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "demo.replay", str(SAMPLE), "--sensor", "hist.m1.temp"),
            *("--unit", "F", "--limit", "0", "100", "--exit", "--state", str(tmp_path / "st")),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_backfill_of_a_2013_recording_counts_every_reading(tmp_path: Path) -> None:
    """Recorded 2013 stamps, DST repeat and duplicates kept: every row counted, none late.

    Fails on the code before this change: the CSV was refused at the repeated
    hour, and with its stamps kept the gateway declared progress at "now",
    so every historical reading was late and most were never analysed.
    """
    rec = read_csv(SAMPLE, on_disorder=Disorder.KEEP)
    window_s = window_for(300.0)  # 24 readings of 5 minutes: 2 h
    assert window_s == 7200
    expected_windows = len({int(r.ts // window_s) for r in rec.rows})
    result = _replay(tmp_path, "--on-disorder", "keep")
    assert result["rows"] == len(rec.rows) == 421
    assert result["nudged"] == rec.nudged > 0
    assert result["counted"] == len(rec.rows), result
    assert result["late_gateway"] == result["late_clusters"] == 0, result
    assert result["rejected_gateway"] == 0, result
    assert result["windows"] == expected_windows, result
    assert result["first_window_s"] == (rec.rows[0].ts // window_s) * window_s
    assert result["alerts"].get("limit", 0) >= 6, result  # the excursion: 6 readings > 100 F


def test_respaced_replay_is_live_and_counts_every_reading(tmp_path: Path) -> None:
    """``--respace`` stamps by the replay clock: windows of now, all counted, none late."""
    before = time.time()
    result = _replay(tmp_path, "--on-disorder", "keep", "--respace", "0.02")
    assert result["counted"] == result["rows"] == 421, result
    assert result["late_gateway"] == result["late_clusters"] == 0, result
    assert result["first_window_s"] >= before - 1


def _line(tmp_path: Path, machine: str) -> Path:
    """configs/demo/sim.yaml reduced to one machine, without its anomaly scenario."""
    doc = yaml.safe_load(DEMO_SIM.read_text())
    doc["machines"] = [m for m in doc["machines"] if m["name"] == machine]
    doc["scenario"] = {"anomalies": []}
    doc["groundtruth"] = str(tmp_path / "gt.jsonl")
    doc["opcua"]["state_dir"] = str(tmp_path / "opcua")
    path = tmp_path / f"{machine}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def _windows(url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(url + "/windows", headers=auth_headers(url)) as r,
    ):
        r.raise_for_status()
        rows: list[dict[str, Any]] = await r.json()
        return rows


@pytest.mark.opcua
@pytest.mark.parametrize(("machine", "transport"), [("pump1", "mqtt"), ("press1", "opcua")])
async def test_single_transport_line_releases_windows_on_both_gateways(
    tmp_path: Path, machine: str, transport: str
) -> None:
    """An MQTT-only and an OPC-UA-only line start (two gateways) and release windows.

    Fails on the code before this change: an MQTT-only line ended in "sim did
    not listen" (the pipeline waited for an OPC-UA server that a line without
    OPC-UA sensors never starts), and two gateways split by transport left one
    gateway without sensors.
    """
    config = _line(tmp_path, machine)
    async with Pipeline(
        tmp_path / "state", gateways=2, sim_config=config, dashboard_port=free_port()
    ) as p:
        assert p.urls is not None
        deadline = time.monotonic() + 90
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = await _windows(p.urls.output_api)
            if {r["gateway"] for r in rows} == {"gw1", "gw2"} and len(rows) >= 10:
                break
            await asyncio.sleep(1.0)
    assert {r["gateway"] for r in rows} == {"gw1", "gw2"}, rows[-5:]
    assert all(r["count"] > 0 for r in rows)
    assert {r["sensor"].split(".")[1] for r in rows} == {machine}
