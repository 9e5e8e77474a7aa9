"""One network namespace per host, on one bridge: separate hosts on this machine.

:func:`hosts` creates, for a run, a namespace per role (``party0``, ``party1``,
``cloud``, ``gateway`` …) plus a ``switch`` namespace holding a Linux bridge;
each host has one veth pair into the bridge, its own address
``10.77.0.<n>/24`` and its own loopback. Nothing is added to the caller's
namespace, so runs in parallel never collide (every name carries a random
run id). On exit every process still inside one of the namespaces is killed
(they are the run's own) and the namespaces are deleted, also when the body
failed.

:meth:`Hosts.argv` prefixes a command with ``ip netns exec NS``;
:meth:`Hosts.inside` runs a Python callable in a thread that has entered the
namespace (``setns``), so a test reaches the hosts' addresses as one of them
would.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
SUBNET = "10.77.0"
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")


class NetnsError(RuntimeError):
    """The namespaces could not be built; the message says what is missing."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _enter(ns: str) -> None:
    """Move the calling thread into namespace ``ns`` (the rest of the process stays)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(_NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Hosts:
    """The namespaces of one run: role → namespace name and address."""

    run: str
    names: dict[str, str]
    addrs: dict[str, str]
    switch: str
    _pools: dict[str, ThreadPoolExecutor] = field(default_factory=dict)

    def argv(self, role: str, *command: str) -> tuple[str, ...]:
        """``command`` run inside ``role``'s namespace."""
        return ("ip", "netns", "exec", self.names[role], *command)

    def inside(self, role: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a thread of this process that lives in ``role``'s namespace."""
        pool = self._pools.get(role)
        if pool is None:
            pool = ThreadPoolExecutor(1, f"netns-{role}", _enter, (self.names[role],))
            self._pools[role] = pool
        return pool.submit(fn, *args).result()

    def port_bytes(self, role: str) -> tuple[int, int]:
        """Bytes the switch received from and sent to ``role``'s host (its bridge port)."""
        done = subprocess.run(
            ["ip", "-j", "-s", "-n", self.switch, "link", "show", "dev", self._port(role)],
            capture_output=True,
            text=True,
            check=True,
        )
        stats = json.loads(done.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def _port(self, role: str) -> str:
        return f"v{sorted(self.addrs).index(role)}"

    def close(self) -> None:
        """Stop the helper threads (they leave with the process's other threads)."""
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools.clear()


def _kill_inside(ns: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "pids", ns],
        capture_output=True,
        text=True,
        check=False,
    )
    for pid in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete(names: Sequence[str]) -> list[str]:
    left = []
    for ns in names:
        _kill_inside(ns)
    time.sleep(0.05)
    for ns in names:
        done = subprocess.run(
            ["ip", "netns", "del", ns],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 and (_NETNS_DIR / ns).exists():
            left.append(f"{ns}: {done.stderr.strip()}")
    return left


@contextlib.contextmanager
def hosts(roles: Sequence[str]) -> Iterator[Hosts]:
    """One namespace per role on one bridge (addresses ``10.77.0.10`` + i); removed on exit."""
    if shutil.which("ip") is None:
        raise NetnsError("the ip command (iproute2) is missing: apt-get install iproute2")
    run = secrets.token_hex(3)
    names = {r: f"tecc-{run}-{r}" for r in (*roles, "switch")}
    addrs = {r: f"{SUBNET}.{10 + i}" for i, r in enumerate(roles)}
    made: list[str] = []
    net = Hosts(run, names, addrs, names["switch"])
    try:
        for ns in names.values():
            try:
                _ip("netns", "add", ns)
            except NetnsError as exc:
                raise NetnsError(
                    f"{exc}: this test builds one network namespace per trust domain and "
                    "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), as CI runs it; run it as root"
                ) from exc
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        sw = names["switch"]
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for role, addr in addrs.items():
            port = net._port(role)
            _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "eth0", "netns", names[role])
            _ip("-n", sw, "link", "set", port, "master", "br0", "up")
            _ip("-n", names[role], "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", names[role], "link", "set", "eth0", "up")
        yield net
    finally:
        net.close()
        left = _delete(made)
        if left:
            raise NetnsError("namespaces not removed: " + "; ".join(left))
