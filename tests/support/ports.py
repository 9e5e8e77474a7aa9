"""Free TCP ports on the loopback interface for services started by tests.

Ports are picked below the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``): a port handed out by ``bind(0)``
can be taken again as the local port of any outgoing connection before the
service under test binds it, a classic source of flaky tests.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port outside the ephemeral range that was free a moment ago."""
    high = _ephemeral_low() - 1
    rng = random.SystemRandom()
    if high > _LOWEST:
        for _ in range(200):
            port = rng.randint(_LOWEST, high)
            if _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        found: int = sock.getsockname()[1]
        return found


def wait_for_port(host: str, port: int, *, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts TCP connections; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)
