"""``tecc-gateway init --mqtt``: sampling a real mosquitto, payload inference, ranges."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.init.mqtt import Sampler, Span, propose, widen
from gateway.init.opcua import SensorIds, sanitize
from tecc_contract.sparkplug import Payload, SparkplugType
from tests.gateway.harness import ROOT, cli
from tests.gateway.initsupport import trust_file
from tests.gateway.publisher import publish
from tests.gateway.receiver import FakeCluster, Platform
from tests.gateway.services import mosquitto

T = SparkplugType


def _sparkplug(seq: int, metrics: list[dict[str, Any]]) -> bytes:
    p = Payload()
    p.timestamp = int(time.time() * 1000)
    p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return bytes(p.SerializeToString())


def _round(i: int) -> list[tuple[str, bytes]]:
    """One message per topic; values move so the observed ranges are known."""
    now = time.time()
    msgs = [
        ("plant/line1/temp", f"{20 + i % 5}".encode()),
        ("plant/line1/press", json.dumps({"value": 100 + i % 10, "ts": now}).encode()),
        ("plant/line1/flow", json.dumps([{"v": 1.5, "t": now}, {"v": 2.5, "t": now}]).encode()),
        ("plant/line1/state", b"running"),
    ]
    if i % 20 == 0:  # a birth now and then: the sampler may subscribe late
        birth: list[dict[str, Any]] = [
            {"name": "bdSeq", "datatype": T.INT64, "long_value": 0},
            {"name": "Oil/Temp", "alias": 1, "datatype": T.DOUBLE, "double_value": 41.5},
        ]
        msgs.append(("spBv1.0/plant/NBIRTH/press1", _sparkplug(0, birth)))
    else:
        data: list[dict[str, Any]] = [
            {"alias": 1, "datatype": T.DOUBLE, "double_value": 40.0 + i % 3}
        ]
        msgs.append(("spBv1.0/plant/NDATA/press1", _sparkplug(i % 20, data)))
    return msgs


@pytest.mark.mqtt
@pytest.mark.processes
@pytest.mark.slow
async def test_init_samples_topics_and_proposes_sensors(
    tmp_path: Path, platform: Platform, clusters: list[FakeCluster]
) -> None:
    """number / json / json_batch / Sparkplug B topics become rules; text topics are skipped."""
    out = tmp_path / "gateway.yaml"
    with mosquitto(tmp_path / "mq") as broker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "init", "--mqtt", f"127.0.0.1:{broker.port}",
            "--topic", "plant/#", "--topic", "spBv1.0/#", "--sample-s", "4",
            "--out", str(out), "--gateway-id", "gw-test",
            "--trust", str(trust_file(tmp_path / "trust.yaml", clusters, platform)),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # publish until the sampler is done (it may subscribe late on a loaded machine)
        done = asyncio.ensure_future(proc.communicate())
        i = 0
        while not done.done() and i < 2000:
            await asyncio.to_thread(publish, broker.port, _round(i))
            await asyncio.sleep(0.05)
            i += 1
        out_b, err_b = await asyncio.wait_for(done, 30)
    stdout, stderr = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, stderr
    assert "plant/line1/state: no numeric payload" in stdout
    doc = yaml.safe_load(out.read_text())
    rules = {t["filter"]: t for t in doc["sources"]["mqtt"][0]["topics"]}
    assert rules["plant/line1/temp"].get("format", "number") == "number"
    assert rules["plant/line1/press"]["format"] == "json"
    assert rules["plant/line1/press"].get("value_path", "value") == "value"
    assert rules["plant/line1/press"]["timestamp_path"] == "ts"
    assert rules["plant/line1/flow"]["format"] == "json_batch"
    assert rules["plant/line1/flow"]["value_path"] == "v"
    assert rules["plant/line1/flow"]["timestamp_path"] == "t"
    assert rules["spBv1.0/plant/#"]["format"] == "sparkplug_b"
    assert "plant/line1/state" not in rules
    ranges = {s["id"]: s["range"] for s in doc["sensors"]}
    low, high = ranges["plant.line1.temp"]
    assert low < 20  # observed 20..24, widened
    assert high > 24
    low, high = ranges["plant.line1.press"]
    assert low < 100
    assert high > 109
    assert "press1.Oil.Temp" in ranges  # the id the gateway's Sparkplug source produces
    assert "observed" in out.read_text()
    checked = cli("check-config", str(out))
    assert checked.returncode == 0, checked.stderr


def test_sampler_infers_formats_without_a_broker() -> None:
    """The classification table, message by message (pure)."""
    s = Sampler()
    s.observe("a/b", b"1.5")
    s.observe("a/b", b'{"value": 3}')
    s.observe("a/c", b'{"m": {"x": 7, "y": true}, "time": "2026-01-01T00:00:00Z"}')
    s.observe("a/d", b"\xff\xfe")
    rules, skipped = propose(s.sample, SensorIds())
    by = {r.filter: r for r in rules}
    assert by["a/b"].format.value == "auto"  # a number and a JSON object on one topic
    assert by["a/c"].value_path == "m.x"
    assert by["a/c"].timestamp_path == "time"
    assert [t for t, _ in skipped] == ["a/d"]


def test_sensor_ids_are_sanitized_stable_and_unique() -> None:
    """Browse names become [A-Za-z0-9_-] segments; a repeated path gets _2, _3."""
    ids = SensorIds()
    assert ids.take(["Line 1", "Temp (°C)"]) == "Line_1.Temp_C"
    assert ids.take(["Line 1", "Temp (°C)"]) == "Line_1.Temp_C_2"
    assert ids.take(["Line_1", "Temp_C"]) == "Line_1.Temp_C_3"
    assert sanitize("///") == "node"


def test_observed_range_is_widened() -> None:
    """Margin: a quarter of the span, a tenth of the magnitude, at least 1."""
    assert widen(Span(20.0, 24.0, 5)) == (17.6, 26.4)
    assert widen(Span(0.0, 0.0, 1)) == (-1.0, 1.0)
