"""Third-party services the pipeline runs beside itself: mosquitto and swtpm.

Both run as child processes on free loopback ports with their state in a
directory of the caller's (``var/`` for the demo, a temp dir for tests) —
never as system services. The same helpers serve the demo, the soak and the
tests, so every run uses the broker and TPM configuration documented here.
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from demo.supervisor import ChildSpec

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000
#: Ports this process handed out lately: two calls before either child binds must not
#: return one port twice (a deployment asks for a dozen at once). Bounded: the oldest
#: are forgotten, by which time their children hold them.
_HANDED_OUT: deque[int] = deque(maxlen=4096)


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 below the kernel's ephemeral range that was free a moment ago.

    A port from ``bind(0)`` lies in the ephemeral range and can be taken as
    the local port of any outgoing connection before the child binds it. A
    port this process handed out lately is not handed out again.
    """
    high = _ephemeral_low() - 1
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(_LOWEST_PORT, max(_LOWEST_PORT, high))
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


def free_port_pair() -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` were both free (swtpm server + control)."""
    for _ in range(100):
        p = free_port()
        if p >= 65535 or p + 1 in _HANDED_OUT or not _bindable(p + 1):
            continue
        _HANDED_OUT.append(p + 1)
        return p
    raise RuntimeError("no pair of adjacent free ports found on 127.0.0.1")


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until ``host:port`` accepts TCP connections, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout_s} s"
                ) from None
            time.sleep(0.05)


def mosquitto_binary() -> str:
    """Path of the mosquitto broker; a clear error if it is not installed."""
    for path in MOSQUITTO_CANDIDATES:
        if Path(path).exists():
            return path
    found = shutil.which("mosquitto")
    if found:
        return found
    raise FileNotFoundError(
        "mosquitto is not installed: run ./tecc setup (apt-get install mosquitto)"
    )


def mosquitto_config(
    state_dir: Path, port: int, *, persistence: bool = True, host: str = "127.0.0.1"
) -> Path:
    """Write ``state_dir/mosquitto.conf`` for a broker on ``host:port``; returns its path.

    ``max_queued_messages 0`` (unlimited): the default of 1000 per client
    silently drops QoS 1 messages for a slow or absent persistent subscriber,
    which would break the gateway's nothing-lost guarantee across restarts.
    Memory is bounded instead by ``max_queued_bytes`` (256 MiB per client).
    ``user`` is the current user: started as root, mosquitto would otherwise
    switch to the ``mosquitto`` user and fail to write ``state_dir``. With
    persistence, sessions survive a restart on the same ``state_dir``
    (mosquitto saves them on SIGTERM and every second).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        f"user {getpass.getuser()}",
        "max_queued_messages 0",
        "max_queued_bytes 268435456",
        "max_inflight_messages 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {state_dir}/", "autosave_interval 1"]
    else:
        lines.append("persistence false")
    conf = state_dir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return conf


def mosquitto_spec(state_dir: Path, port: int, *, name: str = "mosquitto") -> ChildSpec:
    """A supervised mosquitto broker on 127.0.0.1:``port`` persisting in ``state_dir``."""
    conf = mosquitto_config(state_dir, port)
    return ChildSpec(name=name, argv=(mosquitto_binary(), "-c", str(conf)))


@dataclass
class Broker:
    """A running mosquitto process listening on ``host:port`` (a context manager)."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Terminate the broker and wait for it (kill after 5 s); it saves its sessions."""
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


def start_mosquitto(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    persistence: bool = False,
    timeout: float = 10.0,
) -> Broker:
    """Start mosquitto with its config and log in ``state_dir``; wait until it listens.

    The one launcher of tests and benchmarks (the demo supervises
    :func:`mosquitto_spec` instead). ``port`` defaults to a free one, retried
    up to three times if another process takes it first; pass a stopped
    broker's port (and ``persistence=True``) to restart it in place with its
    sessions. Ready means the broker process itself listens on the port, not
    merely that something does.
    """
    exe = mosquitto_binary()
    state_dir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for _ in range(1 if port is not None else 3):
        chosen = port if port is not None else free_port()
        conf = mosquitto_config(state_dir, chosen, persistence=persistence, host=host)
        log = state_dir / f"mosquitto-{chosen}.log"
        with log.open("wb") as out:
            argv = [exe, "-c", str(conf)]
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        broker = Broker(host, chosen, proc, log)
        if _wait_listening(broker, timeout):
            return broker
        broker.stop()
        failures.append(f"{host}:{chosen}: {log.read_text(errors='replace').strip()}")
    raise TimeoutError("mosquitto did not start: " + "; ".join(failures))


_TCP_LISTEN = "0A"  # socket state in /proc/net/tcp


def _wait_listening(broker: Broker, timeout: float) -> bool:
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


def swtpm_argv(state_dir: Path, port: int) -> tuple[str, ...]:
    """The swtpm command line: TPM 2.0 server on ``port``, control on ``port + 1``."""
    binary = shutil.which("swtpm") or "/usr/bin/swtpm"
    return (
        binary,
        "socket",
        "--tpm2",
        "--server",
        f"type=tcp,port={port},bindaddr=127.0.0.1",
        "--ctrl",
        f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
        "--flags",
        "not-need-init,startup-clear",
        "--tpmstate",
        f"dir={state_dir}",
    )


def swtpm_spec(state_dir: Path, port: int, *, name: str = "swtpm") -> ChildSpec:
    """A TPM 2.0 emulator: server on ``port``, control channel on ``port + 1``.

    Reach it with the TCTI ``swtpm:host=127.0.0.1,port=<port>``. The TPM state
    (including sealed objects' hierarchy seeds) persists in ``state_dir``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    return ChildSpec(name=name, argv=swtpm_argv(state_dir, port))
