"""A real mosquitto broker for a test, on a free loopback port (see demo.services).

Use as a context manager or call ``stop()``::

    with start_mosquitto(tmp_path) as broker:
        client = aiomqtt.Client(broker.host, broker.port)
"""

from __future__ import annotations

from pathlib import Path

from demo.services import Broker, mosquitto_config
from demo.services import start_mosquitto as _start

__all__ = ["Broker", "start_mosquitto", "write_config"]


def write_config(directory: Path, port: int, host: str = "127.0.0.1") -> Path:
    """Write the broker config used by :func:`start_mosquitto` (no persistence)."""
    return mosquitto_config(directory, port, persistence=False, host=host)


def start_mosquitto(
    tmp_path: Path, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 10.0
) -> Broker:
    """Start a broker without persistence under ``tmp_path/mosquitto``."""
    return _start(tmp_path / "mosquitto", host=host, port=port, timeout=timeout)
