"""A progress notice from the log waits until the share consumer has caught up after it.

Fails on a feed that notes progress on arrival: a lagging share consumer would
let the epoch close before its data was stored (its readings then late).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from cloud_tecc.config import JetStreamConfig
from cloud_tecc.jetstream.server import start_node
from cloud_tecc.jetstream.sharelog import ShareLog
from cloud_tecc.party.epochs import ProgressTracker
from cloud_tecc.party.logfeed import LogFeed
from cloud_tecc.party.store import ShareStore
from cloud_tecc.party.writer import GroupWriter
from tecc_contract.progress import Progress, seal_progress

GW = "gw-1"


def _msg(data: bytes, seq: int) -> Msg:
    reply = f"$JS.ACK.TECC_PROGRESS.c.1.{seq}.{seq}.{time.time_ns()}.0"
    client: Any = None  # never used: the feed neither acks nor replies to a notice
    return Msg(_client=client, subject=f"tecc.progress.{GW}", reply=reply, data=data)


@dataclass
class _Gate:
    """A log feed of shard 0 (service party0) over a fresh store, with the gateway's key."""

    tmp_path: Path
    cfg: JetStreamConfig
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    now: int = field(default_factory=time.time_ns)

    def __post_init__(self) -> None:
        self.through = self.now - 10**9
        self.tracker = ProgressTracker([GW], started_ns=self.now, active_ns=60 * 10**9)
        self.store = ShareStore(self.tmp_path / "shares.db")
        self.feed = LogFeed(
            cfg=self.cfg,
            state_dir=self.tmp_path,
            shard=0,
            service_id="party0",
            store=self.store,
            writer=GroupWriter(self.store),
            tracker=self.tracker,
            keys={GW: self.key.public_key()},
            stored=lambda _row, _outcome: None,
            registry=self.registry,
        )

    def notice(self) -> Msg:
        """Party0's notice that the gateway is done through ``through`` (sequence 1)."""
        progress = Progress(GW, "party0", self.through, self.now)
        return _msg(seal_progress(progress, self.key), 1)


@contextlib.asynccontextmanager
async def _on_nats(tmp_path: Path) -> AsyncIterator[tuple[_Gate, ShareLog]]:
    """A gate over a real NATS node, with the share log it reads."""
    with start_node(tmp_path / "nats") as nd:
        cfg = JetStreamConfig(servers=tuple(nd.servers))
        g = _Gate(tmp_path, cfg)
        sharelog = await ShareLog.open(cfg, tmp_path, "test")
        try:
            yield g, sharelog
        finally:
            await sharelog.close()
            g.store.close()


def test_notice_waits_for_the_shares_before_it(tmp_path: Path) -> None:
    g = _Gate(tmp_path, JetStreamConfig(embedded=True))
    feed, tracker, through, now = g.feed, g.tracker, g.through, g.now
    try:
        feed.caught_up = time.monotonic()  # caught up *before* the notice arrived
        feed._notice(g.notice())
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == 0
        assert feed.health().notices_waiting == 1
        feed.caught_up = time.monotonic()  # nothing pending after the notice: apply it
        feed._apply_notices()
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == through / 1e9
        assert feed.health().notices_waiting == 0
        feed._notice(_msg(b"junk", 2))
        other = seal_progress(Progress(GW, "party1", now, now), g.key)  # another cluster's
        feed._notice(_msg(other, 3))
        assert g.registry.get_sample_value("tecc_log_malformed_total", {"stream": "progress"}) == 2
    finally:
        g.store.close()


async def test_a_lease_term_asks_its_own_consumer_when_a_notice_arrives(tmp_path: Path) -> None:
    """With a lease term the gate asks the term's consumer (``tecc-shard-0-t<token>``).

    Fails on the code before this change: it asked the shard's shared durable
    consumer, which a term never creates (not found), so every notice waited for
    the share consumer's next fetch instead of being applied when it arrived.
    """
    async with _on_nats(tmp_path) as (g, sharelog):
        feed, tracker, through = g.feed, g.tracker, g.through
        feed.term = 7
        await feed._subscription(sharelog)  # the term's consumer, nothing pending
        assert feed.consumer() == "tecc-shard-0-t7"
        feed._notice(g.notice())
        assert feed.health(time.time_ns()).notices_waiting == 1  # no fetch has run since
        await feed._check_caught_up(sharelog)
        assert feed.health(time.time_ns()).notices_waiting == 0
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == through / 1e9


async def test_notice_during_the_history_is_applied_when_a_fetch_drains_it(
    tmp_path: Path,
) -> None:
    """A takeover's notices arrive while its history is fetched: the fetch that drains
    it asks the consumer at once, the notices apply then (not a fetch timeout later).

    Fails on the code before this change: such a notice arrived after the draining
    fetch was issued, so it waited for the next fetch's 1 s timeout (or the next
    notice) — up to a second of every takeover's first epoch.
    """
    async with _on_nats(tmp_path) as (g, sharelog):
        feed, tracker, through = g.feed, g.tracker, g.through
        feed.term = 3
        await feed._subscription(sharelog)  # the term's consumer, nothing pending
        issued = time.monotonic()  # the draining fetch's request went out here
        feed._notice(g.notice())
        await feed._drained(sharelog, issued)
        assert feed.health(time.time_ns()).notices_waiting == 0
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == through / 1e9


class _ProbeAnsweredNothing:
    """A pull subscription whose fetch ends as nats-py's does when its no-wait probe
    was answered "no messages" and the deadline ran out: a *plain* TimeoutError."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, batch: int, **_: float) -> list[Msg]:
        self.fetches += 1
        if self.fetches > 1:
            await asyncio.Event().wait()  # the next fetch never returns (cancelled)
        raise TimeoutError


async def test_a_plain_fetch_timeout_opens_the_gate_like_nats_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails on the code before this change: the plain TimeoutError was taken for a
    consumer error (logged, 0.5 s pause, the gate left shut), so notices waited for a
    fetch that ended in nats' own TimeoutError — 1-3 s of a takeover's first epoch."""
    g = _Gate(tmp_path, JetStreamConfig(servers=("nats://127.0.0.1:1",)))
    feed, tracker, through, store = g.feed, g.tracker, g.through, g.store
    feed._notice(g.notice())
    sub = _ProbeAnsweredNothing()

    async def subscription(_sharelog: object) -> _ProbeAnsweredNothing:
        return sub

    monkeypatch.setattr(feed, "_subscription", subscription)
    task = asyncio.create_task(feed._consume_shares(cast(ShareLog, None)))
    try:
        for _ in range(100):
            if sub.fetches >= 2:
                break
            await asyncio.sleep(0.01)
        assert sub.fetches == 2
        assert feed.health(time.time_ns()).notices_waiting == 0
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == through / 1e9
    finally:
        task.cancel()
        store.close()


class _Sub:
    """A pull subscription that records each fetch's timeout; ``arrive`` runs during the
    first (a notice arriving while it is out), every fetch finds nothing."""

    def __init__(self, arrive: Any) -> None:
        self.timeouts: list[float] = []
        self.arrive = arrive

    async def fetch(self, batch: int, **kw: float) -> list[Msg]:
        self.timeouts.append(kw["timeout"])
        if len(self.timeouts) == 1:
            self.arrive()
        elif len(self.timeouts) > 2:
            await asyncio.Event().wait()
        raise TimeoutError


class _NoInfo:
    """A share log whose consumer info does not answer (as while acks are in flight)."""

    class js:  # noqa: N801 - stands in for the attribute
        @staticmethod
        async def consumer_info(*_: object) -> None:
            raise TimeoutError


async def test_notice_racing_a_drained_fetch_is_applied_by_a_short_next_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notice that arrives while the draining fetch is out (and the consumer's info
    cannot confirm it) is applied by the next fetch, which waits 0.1 s, not 1 s.

    Fails on the code before this change (every fetch waited 1 s: the notices of a
    takeover waited up to a second after its history was read).
    """
    g = _Gate(tmp_path, JetStreamConfig(servers=("nats://127.0.0.1:1",)))
    feed, tracker, through, store = g.feed, g.tracker, g.through, g.store
    notice = g.notice()
    sub = _Sub(lambda: feed._notice(notice))

    async def subscription(_sharelog: object) -> _Sub:
        return sub

    monkeypatch.setattr(feed, "_subscription", subscription)
    task = asyncio.create_task(feed._consume_shares(cast(ShareLog, _NoInfo())))
    try:
        for _ in range(100):
            if len(sub.timeouts) >= 3:
                break
            await asyncio.sleep(0.01)
        assert sub.timeouts[:2] == [1.0, 0.1]
        assert feed.health(time.time_ns()).notices_waiting == 0  # applied by the second
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == through / 1e9
    finally:
        task.cancel()
        store.close()
