"""Launchers for the real services the gateway tests need: mosquitto and swtpm.

Each starts the real binary on free loopback ports with a throwaway state
directory, waits until it accepts connections, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from demo.services import Broker, free_port_pair, start_mosquitto, swtpm_argv

SWTPM = "swtpm"


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


Mosquitto = Broker


@contextlib.contextmanager
def mosquitto(tmp: Path, *, persistence: bool = True, port: int | None = None) -> Iterator[Broker]:
    """Run mosquitto (on a free port unless given); unlimited queues, optional persistence.

    With persistence, a broker restarted on the same ``tmp`` and port keeps its
    sessions (mosquitto saves them when it is stopped with SIGTERM).
    """
    with start_mosquitto(tmp, port=port, persistence=persistence) as broker:
        yield broker


@dataclass
class Swtpm:
    """A running swtpm TPM 2.0 emulator."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def tcti(self) -> str:
        """The TCTI string the gateway config takes."""
        return f"swtpm:port={self.port}"


@contextlib.contextmanager
def swtpm(state: Path) -> Iterator[Swtpm]:
    """Run swtpm on two consecutive free ports with ``state`` as its state directory."""
    port = free_port_pair()
    state.mkdir(parents=True, exist_ok=True)
    log = (state / "swtpm.log").open("wb")
    proc = subprocess.Popen(swtpm_argv(state, port), stdout=log, stderr=log)
    try:
        wait_port(port + 1)
        yield Swtpm(port, proc)
    finally:
        _stop(proc)
        log.close()
