"""Bounded hostile traffic against loopback ports: junk, slow-loris and oversized requests.

:class:`Flood` runs, until stopped (and never past ``max_s``), per port: a
junk sender (random bytes, or HTTP requests with garbage bodies), a set of
slow-loris connections that trickle header lines, and on HTTP ports an
oversized upload that declares 1 GiB and sends a few MiB. On the ``tls``
ports (the parties serve HTTPS) the HTTP-shaped attacks run inside TLS
(:data:`demo.devstack.deployment.LOOPBACK_TLS`), so they reach the HTTP limits
rather than dying in the handshake; raw junk still hits the TLS parser.
Everything goes to 127.0.0.1 only, and the number of connections is capped.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from demo.devstack.deployment import LOOPBACK_TLS

_JUNK_CONNECTIONS_PER_PORT = 3000
_LORIS_PER_PORT = 30
_OVERSIZED_ROUNDS = 4


@dataclass
class Flood:
    """Hostile traffic to ``ports`` (name → port); ``http`` names take HTTP-shaped attacks."""

    ports: dict[str, int]
    http: set[str]
    max_s: float = 60.0
    #: names whose port serves TLS: HTTP-shaped attacks are wrapped in it
    tls: set[str] = field(default_factory=set)
    sent_connections: int = 0
    oversized_answers: list[bytes] = field(default_factory=list)
    #: per name, how many hostile requests got an HTTP answer (reached the HTTP layer)
    http_answers: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Start one junk, one slow-loris and (HTTP) one oversized thread per port."""
        self._deadline = time.monotonic() + self.max_s
        for i, (name, port) in enumerate(sorted(self.ports.items())):
            targets = [self._junk, self._loris]
            if name in self.http:
                targets.append(self._oversized)
            for fn in targets:
                args = (name, port, name in self.http, i)
                t = threading.Thread(target=fn, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        """Stop every thread and close its sockets."""
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _connect(self, name: str, port: int, timeout: float, http: bool = True) -> socket.socket:
        """A connection to ``port``, inside TLS if ``name`` serves it and the attack is HTTP."""
        s = socket.create_connection(("127.0.0.1", port), timeout)
        if not (http and name in self.tls):
            return s
        try:
            return LOOPBACK_TLS.wrap_socket(s)
        except BaseException:
            s.close()
            raise

    def _answered(self, name: str, answer: bytes) -> None:
        if answer.startswith(b"HTTP/1."):
            with self._lock:
                self.http_answers[name] += 1

    def _junk(self, name: str, port: int, http: bool, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(_JUNK_CONNECTIONS_PER_PORT):
            if not self._running():
                return
            body = rng.randbytes(rng.choice((16, 512, 4096)))
            shaped = http and rng.random() < 0.5
            if shaped:
                path = rng.choice((b"/v1/batches", b"/v1/results", b"/healthz", b"/mpc", b"/x"))
                head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                body = head + str(len(body)).encode() + b"\r\n\r\n" + body
            with contextlib.suppress(OSError), self._connect(name, port, 2, shaped) as s:
                s.settimeout(1.0)
                s.sendall(body)
                with contextlib.suppress(OSError):
                    self._answered(name, s.recv(4096))
            with self._lock:
                self.sent_connections += 1
            time.sleep(0.005)

    def _loris(self, name: str, port: int, _http: bool, _seed: int) -> None:
        socks: list[socket.socket] = []
        try:
            for _ in range(_LORIS_PER_PORT):
                with contextlib.suppress(OSError):
                    s = self._connect(name, port, 2)
                    s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    socks.append(s)
            n = 0
            while self._running():
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-%d: %d\r\n" % (n, n))
                n += 1
                self._stop.wait(1.0)
        finally:
            for s in socks:
                s.close()

    def _oversized(self, name: str, port: int, _http: bool, seed: int) -> None:
        chunk = random.Random(seed).randbytes(1 << 20)
        for _ in range(_OVERSIZED_ROUNDS):
            if not self._running():
                return
            head = (
                b"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 1073741824\r\n\r\n"
            )
            with contextlib.suppress(OSError), self._connect(name, port, 2) as s:
                s.settimeout(5.0)
                with contextlib.suppress(OSError):  # the service may answer and close early
                    s.sendall(head)
                    for _ in range(8):
                        s.sendall(chunk)
                    if name not in self.tls:
                        s.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    answer = s.recv(64)
                    self.oversized_answers.append(answer)
                    self._answered(name, answer)
            self._stop.wait(0.5)
