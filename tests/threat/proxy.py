"""A recording TCP forwarder for loopback tests: every byte both ways is kept.

:class:`RecordingProxy` listens on a free 127.0.0.1 port and forwards each
connection to one upstream port, appending all traffic to ``captured``. It
runs its own asyncio loop in a daemon thread, so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from demo.services import free_port


class RecordingProxy:
    """Forward ``127.0.0.1:port`` → ``127.0.0.1:upstream`` and record the bytes."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.captured = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                with self._lock:
                    self.captured += chunk
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))

    def data(self) -> bytes:
        """Everything recorded so far."""
        with self._lock:
            return bytes(self.captured)

    def close(self) -> None:
        """Stop the loop (open connections are dropped)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
