"""Real services the benchmarks start themselves (bench/ does not import tests/)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from demo.services import free_port, mosquitto_binary, mosquitto_config, wait_for_port


@dataclass(frozen=True)
class Broker:
    """A running mosquitto."""

    port: int


@contextlib.contextmanager
def mosquitto(tmp: Path, *, persistence: bool = True) -> Iterator[Broker]:
    """Run mosquitto on a free loopback port with ``tmp`` as its state dir; stop it on exit."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = mosquitto_config(tmp, port, persistence=persistence)
    with (tmp / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        try:
            wait_for_port(port)
            yield Broker(port)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
