"""Start a real mosquitto broker for a test on a free loopback port.

The broker gets its own config in ``tmp_path``: one listener on 127.0.0.1,
anonymous access, no persistence; the rest of the configuration is the
pipeline's own (:func:`demo.services.mosquitto_config`). Use as a context manager
or call ``stop()``::

    with start_mosquitto(tmp_path) as broker:
        client = aiomqtt.Client(broker.host, broker.port)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from demo.services import free_port, mosquitto_config

MOSQUITTO = "/usr/sbin/mosquitto"
_TCP_LISTEN = "0A"  # socket state in /proc/net/tcp


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
    """Write the broker config used by :func:`start_mosquitto` (no persistence)."""
    return mosquitto_config(directory, port, persistence=False, host=host)


def start_mosquitto(
    tmp_path: Path, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 10.0
) -> Broker:
    """Start mosquitto under ``tmp_path`` and wait until it accepts connections.

    ``port`` defaults to a free one (retried up to three times if another
    process takes it first); pass a stopped broker's port to restart it in
    place (tests of reconnection).
    """
    exe = MOSQUITTO if Path(MOSQUITTO).exists() else shutil.which("mosquitto")
    if exe is None:
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    directory = tmp_path / "mosquitto"
    directory.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else 3
    failures: list[str] = []
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        broker = _launch(exe, directory, host, chosen)
        if _wait_ready(broker, timeout):
            return broker
        broker.stop()
        failures.append(f"{host}:{chosen}: {broker.log.read_text(errors='replace').strip()}")
    raise TimeoutError("mosquitto did not start: " + "; ".join(failures))


def _launch(exe: str, directory: Path, host: str, port: int) -> Broker:
    conf = write_config(directory, port, host)
    log = directory / f"mosquitto-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([exe, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    return Broker(host, port, process, log)


def _wait_ready(broker: Broker, timeout: float) -> bool:
    """True once the broker process itself listens on its port (not some other process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            return False
        if _listens(broker.process.pid, broker.port):
            return True
        time.sleep(0.02)
    return False


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a TCP socket listening on ``port`` (Linux /proc)."""
    try:
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    inodes = {fd[len("socket:[") : -1] for fd in fds if fd.startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if (
                state == _TCP_LISTEN
                and int(local.rsplit(":", 1)[1], 16) == port
                and inode in inodes
            ):
                return True
    return False
