"""How soon a party's coordinator starts its next MPC session after one ended."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud_tecc.errors import PeerError
from cloud_tecc.party.coordinator import SESSION_RETRY_MAX_S, SESSION_RETRY_S, Session
from tests.cloud.test_cloud_agreement import _coordinators


async def test_next_session_follows_a_lost_peer_at_once_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a session that ran, the next one starts after 50 ms, not a second; failures in
    a row double the pause up to 1 s; a session that ran again resets it.

    Fails on the code before this change (every retry slept 1 s: a peer's new shard owner
    waited up to a second for this party's next session to listen).
    """
    coord = _coordinators(tmp_path)[0]
    outcomes = iter(["ran", "refused", "refused", "refused", "refused", "refused", "refused",
                     "ran", "refused"])  # fmt: skip
    pauses: list[float] = []

    async def session() -> None:
        if next(outcomes) == "ran":
            coord.session = Session.RUNNING
        else:
            coord.session = Session.ATTESTING
        raise PeerError("party1 refused: gone")

    async def sleep(s: float) -> None:
        pauses.append(s)
        if len(pauses) == 9:
            raise asyncio.CancelledError

    monkeypatch.setattr(coord, "_session", session)
    with pytest.raises(asyncio.CancelledError):
        await coord.run(sleep=sleep)
    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.05, 0.1]
    assert (SESSION_RETRY_S, SESSION_RETRY_MAX_S) == (0.05, 1.0)
    assert coord.state == "waiting: party1 refused: gone"


async def test_a_retry_that_is_attesting_again_still_names_why_the_last_one_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/healthz`` read while a retry attests again names the peer that failed last time.

    Fails on the code before this change: the state read ``attesting`` during every retry,
    so a peer refused by the allow-list was named only between retries (a CI failure).
    A session that runs shows ``running``.
    """
    coord = _coordinators(tmp_path)[0]
    seen: list[str] = []
    calls = 0

    async def session() -> None:
        nonlocal calls
        calls += 1
        coord.session = Session.ATTESTING
        seen.append(coord.state)
        if calls == 3:
            coord.session = Session.RUNNING
            seen.append(coord.state)
        raise PeerError("party2 is not on the allow-list")

    async def sleep(s: float) -> None:
        if calls == 3:
            raise asyncio.CancelledError

    monkeypatch.setattr(coord, "_session", session)
    with pytest.raises(asyncio.CancelledError):
        await coord.run(sleep=sleep)
    why = "party2 is not on the allow-list"
    assert seen == [
        "attesting",
        f"attesting again; the last session ended: {why}",
        f"attesting again; the last session ended: {why}",
        "running",
    ]
    assert coord.state == f"waiting: {why}"
