"""Real services the benchmarks start themselves (bench/ does not import tests/)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from demo.services import Broker, start_mosquitto

__all__ = ["Broker", "mosquitto"]


@contextlib.contextmanager
def mosquitto(tmp: Path, *, persistence: bool = True) -> Iterator[Broker]:
    """Run mosquitto on a free loopback port with ``tmp`` as its state dir; stop it on exit."""
    with start_mosquitto(tmp, persistence=persistence) as broker:
        yield broker
