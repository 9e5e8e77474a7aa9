"""Loading and validating simulator configs, with errors that name the YAML path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firmware_sim.config import SensorKind, Transport
from firmware_sim.config_yaml import load_config, load_scenario
from firmware_sim.errors import SimConfigError
from firmware_sim.scenario import AnomalyKind
from tests.sim.simhelpers import ConfigFactory

MINIMAL = """
line: l1
seed: 1
machines:
  - name: m1
    sensors:
      - {name: t, kind: temperature}
"""


def test_shipped_config_describes_the_documented_line() -> None:
    """configs/sim.yaml: line1, 3 machines × 5 sensors, both transports, every anomaly kind."""
    config = load_config(Path("configs/sim.yaml"))
    assert config.line == "line1"
    assert config.seed == 42
    assert len(config.machines) == 3
    assert all(len(m.sensors) == 5 for m in config.machines)
    assert {s.transport for s in config.sensors()} == {Transport.OPCUA, Transport.MQTT}
    assert {a.kind for a in config.anomalies} == set(AnomalyKind)
    assert all(a.start_s + a.duration_s <= 120 for a in config.anomalies)
    assert config.sensor("line1.press1.bearing_temp").unit == "°C"
    names = {s.name for s in config.sensors()}
    assert names == {
        "bearing_temp",
        "vibration_rms",
        "hydraulic_pressure",
        "motor_current",
        "spindle_speed",
    }


def test_kind_defaults_fill_unit_range_and_rate(make_config: ConfigFactory) -> None:
    """A sensor with only a kind gets the kind's unit, range and the line's rate."""
    spec = make_config(MINIMAL).sensor("l1.m1.t")
    assert spec.kind is SensorKind.TEMPERATURE
    assert (spec.unit, spec.low, spec.high, spec.rate_hz) == ("°C", 0.0, 150.0, 10.0)
    assert spec.topic("site") == "site/l1/m1/t"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            MINIMAL.replace("{name: t,", "{nme: x, name: t,"),
            "$.machines[0].sensors[0].nme: unknown key; did you mean `name`?",
        ),
        (MINIMAL.replace("seed: 1", "seed: one"), "$.seed: Expected `int`, got `str`"),
        (
            MINIMAL.replace("kind: temperature", "kind: humidity"),
            "$.machines[0].sensors[0].kind: Invalid enum value 'humidity'; write one of temp",
        ),
        (
            MINIMAL.replace("kind: temperature", "range: [5, 1]"),
            "$.machines[0].sensors[0]: range of sensor 't' needs low < high",
        ),
        (MINIMAL.replace("line: l1", "line: 1bad"), "$.line: Expected `str` matching regex"),
        (MINIMAL + "mqtt: {qos: 2}\n", "$.mqtt.qos: Invalid enum value 2; write one of 0, 1"),
        (MINIMAL + "opcua: {security: [tls]}\n", "$.opcua.security[0]: Invalid enum value 'tls'"),
        (
            MINIMAL + "scenario: {anomalies: [{kind: spike, sensor: l1.m1.x, start_s: 1, "
            "magnitude: 2}]}\n",
            "unknown sensor 'l1.m1.x'",
        ),
        (
            MINIMAL + "scenario: {anomalies: [{kind: spike, sensor: l1.m1.t, start_s: 1}]}\n",
            "needs a non-zero magnitude",
        ),
        (MINIMAL.replace("seed: 1\n", ""), "$.seed: required key is missing"),
        (
            MINIMAL + "scenario: {anomalies: [{kind: stuck, sensor: l1.m1.t, start_s: 0.05}]}\n",
            "must start at least one sample period (0.1 s) after the run start",
        ),
        (
            MINIMAL + "scenario: {anomalies: [{kind: dropout, sensor: l1.m1.t, start_s: 1, "
            "duration_s: 0.05}]}\n",
            "shorter than one sample period (0.1 s); use duration_s: 0",
        ),
    ],
)
def test_bad_config_names_the_key(make_config: ConfigFactory, yaml_text: str, message: str) -> None:
    """Every invalid option fails with a message that points at it."""
    with pytest.raises(SimConfigError, match=re.escape(message)):
        make_config(yaml_text)


def test_duplicate_sensor_ids_are_rejected(make_config: ConfigFactory) -> None:
    """Two sensors with the same id on one machine are an error."""
    text = MINIMAL + "      - {name: t, kind: current}\n"
    with pytest.raises(SimConfigError, match=r"duplicate sensor ids: l1\.m1\.t"):
        make_config(text)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported, not a traceback."""
    with pytest.raises(SimConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.yaml")


def test_shipped_scenarios_fit_the_shipped_line() -> None:
    """Every file in configs/scenarios/ is a valid scenario for configs/sim.yaml."""
    config = load_config(Path("configs/sim.yaml"))
    files = sorted(Path("configs/scenarios").glob("*.yaml"))
    assert files
    for path in files:
        anomalies = load_scenario(path)
        assert anomalies, path
        assert config.with_changes(anomalies=anomalies).anomalies == anomalies
