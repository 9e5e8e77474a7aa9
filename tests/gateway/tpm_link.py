"""A recording forwarder for the two swtpm ports (command ``p``, control ``p + 1``).

The swtpm TCTI derives the control port from the command port, so the
forwarder listens on a consecutive pair too. Every byte both ways is kept, so
a test can check what an observer of the TPM link would have seen.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from demo.services import free_port_pair


class TpmLinkRecorder:
    """Forward ``127.0.0.1:port(+1)`` to ``127.0.0.1:upstream(+1)``, recording both ways."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port_pair()
        self._captured = bytearray()
        self._lock = threading.Lock()
        self._servers = [self._listen(self.port + i) for i in (0, 1)]
        for i, srv in enumerate(self._servers):
            threading.Thread(target=self._accept, args=(srv, upstream + i), daemon=True).start()

    @property
    def tcti(self) -> str:
        """The TCTI that reaches swtpm through this recorder."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @staticmethod
    def _listen(port: int) -> socket.socket:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(8)
        return srv

    def _accept(self, srv: socket.socket, upstream: int) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = srv.accept()
                up = socket.create_connection(("127.0.0.1", upstream))
                for a, b in ((client, up), (up, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy ``src`` to ``dst`` until EOF, then close ``src`` (its peer pump closes ``dst``)."""
        with src, contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                with self._lock:
                    self._captured += chunk
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)

    def data(self) -> bytes:
        """Everything recorded so far."""
        with self._lock:
            return bytes(self._captured)

    def close(self) -> None:
        """Stop listening (open connections end with their peers)."""
        for srv in self._servers:
            srv.close()


@contextlib.contextmanager
def recorded_link(upstream: int) -> Iterator[TpmLinkRecorder]:
    """A :class:`TpmLinkRecorder` for the block."""
    rec = TpmLinkRecorder(upstream)
    try:
        yield rec
    finally:
        rec.close()
