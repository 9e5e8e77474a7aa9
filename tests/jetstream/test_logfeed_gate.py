"""A progress notice from the log waits until the share consumer has caught up after it.

Fails on a feed that notes progress on arrival: a lagging share consumer would
let the epoch close before its data was stored (its readings then late).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from cloud_tecc.config import JetStreamConfig
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


def test_notice_waits_for_the_shares_before_it(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    now = time.time_ns()
    tracker = ProgressTracker([GW], started_ns=now, active_ns=60 * 10**9)
    store = ShareStore(tmp_path / "shares.db")
    registry = CollectorRegistry()
    feed = LogFeed(
        cfg=JetStreamConfig(embedded=True),
        state_dir=tmp_path,
        shard=0,
        service_id="party0",
        store=store,
        writer=GroupWriter(store),
        tracker=tracker,
        keys={GW: key.public_key()},
        stored=lambda _row, _outcome: None,
        registry=registry,
    )
    try:
        through = now - 10**9
        feed.caught_up = time.monotonic()  # caught up *before* the notice arrived
        feed._notice(_msg(seal_progress(Progress(GW, "party0", through, now), key), 1))
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == 0
        assert feed.health().notices_waiting == 1
        feed.caught_up = time.monotonic()  # nothing pending after the notice: apply it
        feed._apply_notices()
        assert tracker.snapshot(time.time_ns())[GW]["through_s"] == through / 1e9
        assert feed.health().notices_waiting == 0
        feed._notice(_msg(b"junk", 2))
        other = seal_progress(Progress(GW, "party1", now, now), key)  # another cluster's
        feed._notice(_msg(other, 3))
        assert registry.get_sample_value("tecc_log_malformed_total", {"stream": "progress"}) == 2
    finally:
        store.close()
