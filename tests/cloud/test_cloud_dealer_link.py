"""The party's dealer link: aligned correlation streams, trimming, realignment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.mpc.correlations import Batch, Kind, Plan
from cloud_tecc.mpc.dealer_client import DealerLink
from cloud_tecc.mpc.dealer_server import DealerService
from demo.services import free_port


def _triples_hold(a: Batch, b: Batch) -> bool:
    x = a.fields["a"] + b.fields["a"]
    y = a.fields["b"] + b.fields["b"]
    return bool(np.array_equal(x * y, a.fields["c"] + b.fields["c"]))


async def _dealer(depth: int) -> tuple[DealerService, Callable[[int], Awaitable[DealerLink]]]:
    """A started dealer for two parties (``depth`` batches ahead), and how party i links."""
    dealer_key = Ed25519PrivateKey.generate()
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    dealer = DealerService(
        n=2,
        plan=Plan(triples=100, truncs=50, comparisons=10),
        key=dealer_key,
        party_keys={i: k.public_key() for i, k in enumerate(keys)},
        depth=depth,
    )
    port = free_port()
    await dealer.start("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/dealer"

    async def link(i: int) -> DealerLink:
        return await DealerLink.connect(
            url, party=i, key=keys[i], dealer_key=dealer_key.public_key(), wait_s=10
        )

    return dealer, link


async def test_links_stay_aligned_through_trimming_and_realignment() -> None:
    """Uneven take sequences keep both stores aligned; a fresh link realigns."""
    dealer, link = await _dealer(depth=4)
    links = [await link(0), await link(1)]
    try:
        seqs = [await lk.next_seq() for lk in links]
        for lk in links:
            await lk.align(max(seqs))
        for kind, count in [
            (Kind.TRIPLE, 30),
            (Kind.TRUNC, 400),
            (Kind.TRIPLE, 350),
            (Kind.TRIPLE, 5),
        ]:
            got = await asyncio.gather(*(lk.take(kind, count) for lk in links))
            if kind is Kind.TRIPLE:
                assert _triples_hold(*got)
        # Party 1 restarts: a new link, behind or ahead of party 0 in the batch stream.
        await links[1].close()
        links[1] = await link(1)
        seqs = [await lk.next_seq() for lk in links]
        for lk in links:
            await lk.align(max(seqs))
        got = await asyncio.gather(*(lk.take(Kind.TRIPLE, 120) for lk in links))
        assert _triples_hold(*got)
    finally:
        for lk in links:
            await lk.close()
        await dealer.close()


async def test_alignment_drops_skipped_batches_unexpanded() -> None:
    """A link far behind skips to the other party's batch without expanding the gap.

    Fails on the code before this change (every skipped batch was received, expanded
    and then dropped, the first sequence number waited for a whole expanded group
    and the alignment for the target's expansion: the CPU-bound part of a
    takeover's session start).
    """
    dealer, link = await _dealer(depth=16)
    ahead = await link(0)
    behind: DealerLink | None = None
    try:
        await ahead.take(Kind.TRIPLE, 1200)  # 12 batches used by party 0 alone
        behind = await link(1)
        seqs = [await ahead.next_seq(), await behind.next_seq()]
        assert seqs[0] >= 12, seqs
        assert seqs[1] == 0, seqs
        for lk in (ahead, behind):
            await lk.align(seqs[0])
        assert behind.fetched == 0  # the alignment waited for no expansion
        got = await asyncio.gather(*(lk.take(Kind.TRIPLE, 120) for lk in (ahead, behind)))
        assert _triples_hold(*got)
        assert behind.skipped == seqs[0]  # batches 0 .. seqs[0] - 1, none expanded
    finally:
        await ahead.close()
        if behind is not None:
            await behind.close()
        await dealer.close()
