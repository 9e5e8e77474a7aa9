"""The ``tecc-sim`` command line, in-process and as a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from demo.services import free_port
from firmware_sim.cli import build_parser, configure_run, main
from firmware_sim.config_yaml import load_config
from firmware_sim.errors import SimConfigError
from firmware_sim.groundtruth import read_ground_truth
from firmware_sim.line import simulate
from tests.sim.simhelpers import START, Collector, expected_messages
from tests.support.mosquitto import Broker


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a process with captured output (fork/exec returns at once)."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["replay", "--help"],
        ["load", "--help"],
        ["sensors", "--help"],
    ],
)
def test_help_works(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand prints its usage and exits 0."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tecc-sim")


def test_module_entry_point_runs() -> None:
    """``python -m firmware_sim --help`` lists the subcommands."""
    done = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert "{check-config,run,replay,sensors,load}" in done.stdout


def test_bad_config_exits_2_with_the_yaml_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the config is reported by path, with exit code 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("line: l1\nseed: 1\nmachines:\n  - name: m\n    sensorz: []\n")
    assert main(["run", "--config", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "$.machines[0].sensorz: unknown key; did you mean `sensors`?" in err


@pytest.mark.mqtt
def test_unreachable_broker_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No broker on the port: exit code 2 and a message that says what to do."""
    conf = tmp_path / "m.yaml"
    conf.write_text(
        "line: l1\nseed: 1\nmachines:\n  - name: m\n    transport: mqtt\n"
        "    sensors: [{name: t, kind: temperature}]\n"
    )
    argv = ["run", "--config", str(conf), "--quiet", "--duration", "1"]
    argv += ["--mqtt-port", str(free_port()), "--groundtruth", str(tmp_path / "gt.jsonl")]
    assert main(argv) == 2
    assert "cannot connect to MQTT broker" in capsys.readouterr().err


@pytest.mark.mqtt
@pytest.mark.opcua
@pytest.mark.processes
@pytest.mark.slow
async def test_run_shipped_config_as_a_process(broker: Broker, tmp_path: Path) -> None:
    """``tecc-sim run`` on configs/sim.yaml: progress line, full ground truth, MQTT traffic."""
    gt = tmp_path / "gt.jsonl"
    config = load_config(Path("configs/sim.yaml"))
    argv = [sys.executable, "-m", "firmware_sim", "run", "--config", "configs/sim.yaml"]
    argv += ["--mqtt-port", str(broker.port), "--opcua-port", str(free_port())]
    argv += ["--state-dir", str(tmp_path / "pki"), "--groundtruth", str(gt)]
    argv += ["--duration", "120", "--speed", "40", "--start-time", str(START)]
    async with Collector(broker.host, broker.port, "site/#") as collector:
        proc = spawn(argv)
        out, err = await asyncio.to_thread(proc.communicate, timeout=120)
        assert proc.returncode == 0, err.decode()
        offline = simulate(config, start=START, duration_s=120)
        await collector.wait_for(expected_messages(config, offline.samples, min_qos=1))
    assert " msg/s " in err.decode()
    assert "anomalies=10" in err.decode()
    assert "done: samples=" in out.decode()
    expected = offline.records
    assert sorted(read_ground_truth(gt), key=lambda r: (r.start, r.sensor)) == sorted(
        expected, key=lambda r: (r.start, r.sensor)
    )
    topics = set(collector.received.payloads)
    assert topics == {s.topic("site") for s in config.sensors() if s.transport.value == "mqtt"}


@pytest.mark.mqtt
@pytest.mark.processes
async def test_sigterm_stops_cleanly_and_closes_the_running_anomaly(
    broker: Broker, tmp_path: Path
) -> None:
    """SIGTERM mid-anomaly: exit 0, and the cut-off anomaly is in the ground truth."""
    conf = tmp_path / "m.yaml"
    conf.write_text(
        "line: l1\nseed: 1\nmachines:\n  - name: m\n    transport: mqtt\n"
        "    sensors: [{name: t, kind: temperature}]\n"
        "scenario:\n  anomalies:\n"
        "    - {kind: level_shift, sensor: l1.m.t, start_s: 0.5, duration_s: 1000, magnitude: 5}\n"
    )
    gt = tmp_path / "gt.jsonl"
    argv = [sys.executable, "-m", "firmware_sim", "run", "--config", str(conf), "--quiet"]
    argv += ["--mqtt-port", str(broker.port), "--groundtruth", str(gt), "--speed", "5"]
    async with Collector(broker.host, broker.port, "site/#") as collector:
        proc = spawn(argv)
        try:
            await collector.wait_for(30, within=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = await asyncio.to_thread(proc.communicate, timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("stopped: samples=")
    records = read_ground_truth(gt)
    assert [r.kind for r in records] == ["level_shift"]
    assert records[0].samples >= 25
    assert records[0].end - records[0].start == pytest.approx((records[0].samples - 1) * 0.1)


@pytest.mark.mqtt
async def test_replay_command_publishes_the_csv(broker: Broker, tmp_path: Path) -> None:
    """``tecc-sim replay`` sends each CSV row to the sensor's topic with its timestamp."""
    csv = tmp_path / "rec.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{START + i},{i * 1.5}\n" for i in range(6)))
    argv = ["replay", "--csv", str(csv), "--sensor", "l9.rec.flow", "--speed", "50"]
    argv += ["--mqtt-port", str(broker.port), "--payload", "json"]
    async with Collector(broker.host, broker.port, "site/#") as collector:
        assert await asyncio.to_thread(main, argv) == 0
        await collector.wait_for(6)
    got = collector.received.json_readings("site/l9/rec/flow")
    assert [(g["ts"], g["value"]) for g in got] == [(START + i, i * 1.5) for i in range(6)]


@pytest.mark.mqtt
def test_load_command_prints_one_json_line(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tecc-sim load`` reports readings, messages and rate as JSON on its last line."""
    argv = ["load", "--nodes", "20", "--rate", "200", "--duration", "0.5", "--qos", "1"]
    assert main([*argv, "--mqtt-port", str(broker.port)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["readings"] == report["messages"] == report["acked"] == 100
    assert report["rate"] > 0


def test_run_flags_override_the_config(tmp_path: Path) -> None:
    """Endpoint, seed, speed, duration and scenario flags replace the config's values."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "anomalies:\n  - {kind: stuck, sensor: line1.pump1.bearing_temp, start_s: 3, "
        "duration_s: 2}\n"
    )
    argv = ["run", "--config", "configs/sim.yaml", "--scenario", str(scenario)]
    argv += ["--mqtt-port", "1999", "--opcua-port", "4999", "--seed", "7", "--speed", "3"]
    argv += ["--duration", "9", "--state-dir", str(tmp_path)]
    config = configure_run(build_parser().parse_args(argv))
    assert (config.mqtt.port, config.opcua.port, config.opcua.state_dir) == (1999, 4999, tmp_path)
    assert (config.seed, config.speed, config.duration_s) == (7, 3.0, 9.0)
    assert [(a.kind.value, a.sensor) for a in config.anomalies] == [
        ("stuck", "line1.pump1.bearing_temp")
    ]
    scenario.write_text("anomalys: []\n")
    with pytest.raises(
        SimConfigError, match=r"\$\.anomalys: unknown key; did you mean `anomalies`"
    ):
        configure_run(build_parser().parse_args(argv))


def test_sensors_command_lists_addresses_units_and_ranges(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``tecc-sim sensors`` prints every sensor with its topic or node id, unit and range."""
    assert main(["sensors", "--config", "configs/sim.yaml"]) == 0
    entries = {e["sensor"]: e for e in json.loads(capsys.readouterr().out)}
    assert len(entries) == 15
    temp = entries["line1.press1.bearing_temp"]
    assert temp["transport"] == "opcua"
    assert temp["node"] == "s=line1.press1.bearing_temp"
    assert (temp["unit"], temp["range"]) == ("°C", [0.0, 150.0])
    vib = entries["line1.mill1.vibration_rms"]
    assert (vib["topic"], vib["payload"], vib["qos"]) == (
        "site/line1/mill1/vibration_rms",
        "plain",
        1,
    )
