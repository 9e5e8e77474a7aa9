"""Fixtures for the simulator tests: a real broker and small line configs."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.config import SimConfig
from firmware_sim.config_yaml import load_config
from tests.sim.simhelpers import ConfigFactory
from tests.support.mosquitto import Broker, start_mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free port, stopped after the test."""
    with start_mosquitto(tmp_path) as running:
        yield running


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """Write YAML text (dedented) to a temp file and load it as a SimConfig."""
    counter = iter(range(1_000_000))

    def make(text: str) -> SimConfig:
        path = tmp_path / f"sim{next(counter)}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return load_config(path)

    return make
