"""Recording what parties receive, for the view tests (test-side wrappers only).

A transport wrapper keeps every message a party receives, a dealer wrapper
every dealer frame as it would travel, and a :class:`Party` subclass every
value opened to it; :func:`coalition_view` flattens a coalition's view of one
run to bytes (raw parts, then the sums a curious coalition would compute).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_tecc.mpc import Kind, Party, reveal, seeded_random_bytes
from cloud_tecc.mpc.bundle_wire import encode_batch
from cloud_tecc.mpc.dealer import deal_kind
from cloud_tecc.mpc.protocol import Open, Opened
from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import Payload, Transport
from tecc_contract.ring import RingArray


class Recorder:
    """Transport wrapper: keeps every message its party receives, in round and peer order."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.received: list[bytes] = []

    async def exchange(self, round_id: int, outgoing: Mapping[int, Payload]) -> dict[int, Payload]:
        """Forward, then record each peer's message."""
        got = await self.inner.exchange(round_id, outgoing)
        self.received.extend(bytes(got[peer]) for peer in sorted(got))
        return got

    async def close(self) -> None:
        """Forward."""
        await self.inner.close()


class ViewParty(Party):
    """A party that also keeps every value opened to it (test-side subclass)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[bytes] = []

    async def _open(self, msg: Open) -> Opened:
        out = await super()._open(msg)
        self.opened.extend(np.ascontiguousarray(o).tobytes() for o in out)
        return out


class RecordingDealer(LocalDealer):
    """An in-process dealer that keeps each party's dealer frames as they would travel."""

    def __init__(self, n: int, seed: bytes) -> None:
        super().__init__(n, random_bytes=seeded_random_bytes(seed), min_batch=1)
        self.frames: list[list[bytes]] = [[] for _ in range(n)]

    def refill(self, kind: Kind, count: int) -> None:
        """Deal exactly ``count`` correlations and record every party's frame."""
        bundles = deal_kind(kind, count, self.n, self.frac_bits, self.random_bytes)
        for i, (store, b) in enumerate(zip(self.stores, bundles, strict=True)):
            self.frames[i].append(encode_batch(i, len(self.frames[i]), [b]))
            store.add_bundle(b)


@dataclass
class PartyView:
    """What one party held and received in one run."""

    inputs: list[RingArray]
    bits: RingArray
    frames: list[bytes]
    received: list[bytes]
    opened: list[bytes]
    outputs: list[RingArray] = field(default_factory=list)


def coalition_view(views: Sequence[PartyView], coalition: Sequence[int]) -> np.ndarray[Any, Any]:
    """One run's view of a coalition, flattened to bytes (raw parts, then derived sums)."""
    chunks: list[bytes] = []
    members = [views[i] for i in coalition]
    for v in members:
        chunks += [a.tobytes() for a in v.inputs] + [v.bits.tobytes()]
        chunks += v.frames + v.received + v.opened + [a.tobytes() for a in v.outputs]
    for slot in range(len(members[0].inputs)):
        chunks.append(reveal([v.inputs[slot] for v in members]).tobytes())
    chunks.append(np.bitwise_xor.reduce([v.bits for v in members]).tobytes())
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)
