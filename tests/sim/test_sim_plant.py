"""The simulator's Modbus register layout and Sparkplug addressing from the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.config import Transport
from firmware_sim.config_yaml import load_config
from firmware_sim.errors import SimConfigError
from firmware_sim.plant import modbus_mappings, sparkplug_filter

LINE = """
line: l1
seed: 1
modbus: {{type: {type}, scale: {scale}, base_address: 10}}
machines:
  - name: m1
    transport: modbus
    sensors:
      - {{name: t, kind: temperature}}
      - {{name: p, kind: pressure}}
  - name: m2
    transport: sparkplug
    sensors:
      - {{name: s, kind: speed, range: [0, 12]}}
"""


def _write(tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "line.yaml"
    path.write_text(LINE.format(**{"type": "float32", "scale": 1.0, **kw}))
    return path


@pytest.mark.parametrize(("dtype", "words"), [("int16", 1), ("float32", 2), ("float64", 4)])
def test_modbus_sensors_get_consecutive_addresses(tmp_path: Path, dtype: str, words: int) -> None:
    """Config order from base_address on, as many registers as the type needs."""
    config = load_config(_write(tmp_path, type=dtype))
    maps = modbus_mappings(config)
    assert [(m.sensor, m.address) for m in maps] == [("l1.m1.t", 10), ("l1.m1.p", 10 + words)]
    assert {s.transport for s in config.sensors()} == {Transport.MODBUS, Transport.SPARKPLUG}


def test_a_range_that_does_not_fit_the_integer_type_names_the_key(tmp_path: Path) -> None:
    """temperature [0, 150] at scale 0.001 is 150,000: beyond int16, a clear error."""
    with pytest.raises(SimConfigError, match=r"modbus\.scale: l1\.m1\.t.s range"):
        load_config(_write(tmp_path, type="int16", scale=0.001))


def test_sparkplug_node_per_machine(tmp_path: Path) -> None:
    """Group = line, edge node = machine: one filter covers the node's every message."""
    config = load_config(_write(tmp_path))
    [spec] = config.sensors(Transport.SPARKPLUG)
    assert sparkplug_filter(spec) == "spBv1.0/l1/+/m2/#"
