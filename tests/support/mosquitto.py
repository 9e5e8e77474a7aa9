"""Start a real mosquitto broker for a test on a free loopback port.

The broker gets its own config in ``tmp_path``: one listener on 127.0.0.1,
anonymous access, no persistence and ``max_queued_messages 0`` (unlimited: a
slow QoS 1 subscriber must not silently lose messages; mosquitto's default
drops everything past 1,000). Use as a context manager or call ``stop()``::

    with start_mosquitto(tmp_path) as broker:
        client = aiomqtt.Client(broker.host, broker.port)
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.ports import free_port, wait_for_port

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass
class Broker:
    """A running mosquitto process listening on ``host:port``."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Terminate the broker and wait for it (kill after 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_config(directory: Path, port: int, host: str = "127.0.0.1") -> Path:
    """Write the broker config used by :func:`start_mosquitto` and return its path."""
    conf = directory / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} {host}",
                "allow_anonymous true",
                "max_queued_messages 0",
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return conf


def start_mosquitto(
    tmp_path: Path, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 10.0
) -> Broker:
    """Start mosquitto under ``tmp_path`` and wait until it accepts connections.

    ``port`` defaults to a free one; pass a stopped broker's port to restart it
    in place (tests of reconnection).
    """
    exe = MOSQUITTO if Path(MOSQUITTO).exists() else shutil.which("mosquitto")
    if exe is None:
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    directory = tmp_path / "mosquitto"
    directory.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port(host)
    conf = write_config(directory, port, host)
    log = directory / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([exe, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    broker = Broker(host, port, process, log)
    try:
        wait_for_port(host, port, timeout=timeout)
    except TimeoutError:
        broker.stop()
        raise TimeoutError(
            f"mosquitto did not listen on {host}:{port}: {log.read_text(errors='replace')}"
        ) from None
    return broker
