"""What a shard worker with a lease does with each epoch before committing it locally."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from cloud_tecc.analytics.plan import StreamState


class EpochFence(Protocol):
    """Where a shard worker with a lease records each epoch before committing it locally.

    :class:`~cloud_tecc.party.takeover.ActiveShard` (JetStream mode): the epoch goes
    to the party's log and the committed state, fenced by the lease token; a stale
    owner gets ``FencedError`` and commits nothing.
    """

    async def commit(
        self,
        end_ns: int,
        states: Mapping[tuple[str, str], StreamState],
        readings: int,
        done_ns: int,
        body: bytes | None,
        *,
        map_id: str = "",
    ) -> None:
        """Record the epoch durably for a successor (raises if this worker is fenced).

        ``map_id``: the shard map version the parties agreed for the epoch.
        """

    async def released(self, end_ns: int) -> None:
        """The output service accepted the results of the epoch ending at ``end_ns``."""
