"""Group commit: many concurrent uploads, one durable SQLite transaction per group.

Each request hands its prepared batch to :meth:`GroupWriter.submit` and waits;
a single writer task drains everything queued, inserts it in one transaction
(fsync with ``synchronous=FULL``) in a worker thread, and only then resolves
every waiting request. Throughput scales with concurrency while each
acknowledgement still means "on disk".
"""

from __future__ import annotations

import asyncio
from typing import Final

from cloud_tecc.party.store import BatchRow, ShareStore

MAX_GROUP: Final = 256


class GroupWriter:
    """Serialises inserts into :class:`ShareStore` with group commit."""

    def __init__(self, store: ShareStore) -> None:
        self._store = store
        self._queue: asyncio.Queue[tuple[BatchRow, asyncio.Future[str]]] = asyncio.Queue()

    async def submit(self, row: BatchRow) -> str:
        """Persist ``row``; returns the store's outcome label once durable."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self._queue.put((row, fut))
        return await fut

    async def run(self) -> None:
        """The writer loop (run as a background task)."""
        while True:
            group = [await self._queue.get()]
            while not self._queue.empty() and len(group) < MAX_GROUP:
                group.append(self._queue.get_nowait())
            try:
                outcomes = await asyncio.to_thread(
                    self._store.insert_batches, [row for row, _ in group]
                )
            except Exception as exc:
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), outcome in zip(group, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)
