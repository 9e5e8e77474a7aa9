"""The epoch loop's pacing: idle rounds back off, news and liveness expiries end the wait.

These fail on the code before this change (every round followed by one fixed
``tick_s``; no news hook on the progress tracker).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cloud_tecc.mpc.source import LocalDealer
from cloud_tecc.mpc.transport import MemoryNetwork
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.pacing import IdlePacer
from tests.cloud.test_cloud_agreement import T0, S, _coordinators, _ingest, _streams


def test_idle_rounds_back_off_to_the_cap_and_a_pending_epoch_keeps_the_tick() -> None:
    pacer = IdlePacer(0.05, idle_max_s=0.3)
    waits = [pacer.after_round(idle=True) for _ in range(5)]
    assert waits == [0.1, 0.2, 0.3, 0.3, 0.3]
    assert pacer.after_round(idle=False) == 0.05  # proposed, not agreed yet: tick on
    assert pacer.after_round(idle=True) == 0.1


def test_news_restarts_the_backoff_and_the_cap_is_never_below_the_tick() -> None:
    pacer = IdlePacer(0.05, idle_max_s=0.3)
    for _ in range(4):
        pacer.after_round(idle=True)
    pacer.news()
    assert pacer.after_round(idle=True) == 0.1
    slow = IdlePacer(2.0, idle_max_s=1.0)
    assert slow.after_round(idle=True) == 2.0  # a tick longer than the cap: as before


def test_a_wait_ends_at_the_next_liveness_expiry_but_not_below_the_tick() -> None:
    pacer = IdlePacer(0.05)
    assert pacer.wait_s(1.0, now_ns=0, expiry_ns=None) == 1.0
    assert pacer.wait_s(1.0, now_ns=0, expiry_ns=S // 4) == 0.25
    assert pacer.wait_s(1.0, now_ns=0, expiry_ns=S // 100) == 0.05


def test_the_tracker_announces_progress_and_gateways_but_not_old_notices_or_batches() -> None:
    tracker = ProgressTracker(["a"], started_ns=0, active_ns=10 * S)
    news: list[int] = []
    tracker.on_news = lambda: news.append(1)
    tracker.note("a", T0, 1)
    assert len(news) == 1
    tracker.note("a", T0, 2)  # the same progress again (notices repeat): nothing new
    tracker.note("a", T0 - S, 3)  # older progress: nothing new
    assert len(news) == 1
    tracker.heard("a", 4)  # a batch: it cannot close an epoch before its notice
    assert len(news) == 1
    tracker.add("b", 5)  # a gateway enrolled while running
    tracker.add("b", 6)  # already tracked
    assert len(news) == 2


def test_the_next_liveness_expiry_is_the_earliest_live_gateways() -> None:
    tracker = ProgressTracker(["a", "b"], started_ns=0, active_ns=10 * S)
    tracker.heard("b", 4 * S)
    assert tracker.next_expiry_ns(S) == 10 * S
    assert tracker.next_expiry_ns(11 * S) == 14 * S
    assert tracker.next_expiry_ns(15 * S) is None  # nobody live: nothing expires


async def test_an_idle_wait_ends_when_a_progress_notice_arrives(tmp_path: Path) -> None:
    coord = _coordinators(tmp_path, tracked=("gw",))[0]
    coord.tracker.note("gw", T0, 1)  # news before the wait: handled, not kept
    await coord._pause(0.0)
    pause = asyncio.create_task(coord._pause(600.0))
    await asyncio.sleep(4 * coord.cfg.tick_s)
    assert not pause.done()  # idle, no news: still waiting (the tick is 0.2 s)
    coord.tracker.note("gw", T0 + S, 2)
    await asyncio.wait_for(pause, 30.0)  # without the news the wait would last 600 s
    assert coord.pacer.delay_s == coord.cfg.tick_s  # the backoff starts again


def _rounds(coord: Coordinator, outcome: str) -> float:
    """``tecc_party_agreement_rounds_total{outcome}`` of one coordinator."""
    return next(
        s.value
        for m in coord.round.rounds.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels == {"outcome": outcome}
    )


async def test_rounds_are_counted_agreed_refused_or_idle_and_only_idle_ones_back_off(
    tmp_path: Path,
) -> None:
    """A proposal a follower refuses keeps the tick (something is pending); nothing
    proposed is idle and backs off."""
    coords = _coordinators(tmp_path, tracked=("gw",))
    _ingest(coords, _streams(6))
    coords[0].tracker.note("gw", T0 + 30 * S, heard_ns=time.time_ns())
    coords[1].tracker.note("gw", T0 + 10 * S, heard_ns=time.time_ns())
    net, dealer = MemoryNetwork(2), LocalDealer(2)

    async def tick() -> None:
        await asyncio.gather(
            *(c._tick(net.transport(i), dealer.source(i)) for i, c in enumerate(coords))
        )

    await tick()  # [0, 10 s) is closed for both: computed
    await tick()  # [10 s, 20 s): party 1 has no notice for it yet
    for c in coords:
        assert (_rounds(c, "agreed"), _rounds(c, "refused"), _rounds(c, "idle")) == (1, 1, 0)
        assert c.round.proposed
        assert c.pacer.after_round(idle=not c.round.proposed) == c.cfg.tick_s
    coords[1].tracker.note("gw", T0 + 30 * S, heard_ns=time.time_ns())
    await tick()
    await tick()  # both remaining epochs computed
    await tick()  # nothing left
    for c in coords:
        assert (_rounds(c, "agreed"), _rounds(c, "idle")) == (3, 1)
        assert not c.round.proposed
        assert c.pacer.after_round(idle=not c.round.proposed) == 2 * c.cfg.tick_s
        c.store.close()


class _Mesh:
    """A mesh stub: whether a peer's message is queued."""

    def __init__(self) -> None:
        self.queued = False

    def has_incoming(self) -> bool:
        return self.queued


async def test_an_idle_wait_ends_when_a_peer_begins_a_round(tmp_path: Path) -> None:
    """A party without news of its own joins the round of a peer that has some (else the
    peer's round would wait out this party's whole backoff)."""
    coord = _coordinators(tmp_path)[0]
    mesh = _Mesh()
    pause = asyncio.create_task(coord._pause(600.0, mesh))
    await asyncio.sleep(4 * coord.cfg.tick_s)
    assert not pause.done()
    mesh.queued = True
    await asyncio.wait_for(pause, 30.0)  # without the check the wait would last 600 s
