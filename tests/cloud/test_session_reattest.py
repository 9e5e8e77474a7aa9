"""In-session re-attestation runs beside the agreement rounds, never in their way.

Fails on the code before this change: the session awaited the peers' and the
dealer's fresh quotes between two rounds, so a peer (or one of its listed workers)
restarting and answering late, up to the fetch timeouts, held every epoch of the
session and kept a round from noticing a dead link for as long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
import yaml

from cloud_tecc.config import load_party
from cloud_tecc.errors import PeerError
from cloud_tecc.mpc.errors import PeerLostError
from cloud_tecc.mpc.source import CorrelationSource
from cloud_tecc.mpc.transport import Transport
from cloud_tecc.party.coordinator import Coordinator
from cloud_tecc.party.dealer_choice import InUse
from cloud_tecc.party.pacing import IdlePacer
from tests.cloud.test_cloud_agreement import _coordinators

NO_MESH, NO_LINK, NO_DEALER = (
    cast(Transport, None),
    cast(CorrelationSource, None),
    cast(InUse, None),
)


def _quick(coordinator: Coordinator, tmp_path: Path, reattest_s: float) -> None:
    """Re-load party 0's config with ``attestation.reattest_s``; a fast pacer."""
    path = tmp_path / "p0.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["attestation"] = {"reattest_s": reattest_s}
    path.write_text(yaml.safe_dump(doc))
    coordinator.cfg = load_party(path)
    coordinator.pacer = IdlePacer(0.01)


async def _short_pause(_delay_s: float, _mesh: object = None) -> None:
    await asyncio.sleep(0.005)


def _patch(
    monkeypatch: pytest.MonkeyPatch,
    coordinator: Coordinator,
    quotes: Callable[[InUse], Awaitable[None]],
    tick: Callable[[Transport, object], Awaitable[bool]],
) -> None:
    """The session's re-attestation, rounds and pause replaced (no mesh, no peers)."""
    monkeypatch.setattr(coordinator, "_reattest_session", quotes)
    monkeypatch.setattr(coordinator, "_tick", tick)
    monkeypatch.setattr(coordinator, "_pause", _short_pause)


async def test_rounds_go_on_while_a_quote_is_slow_and_a_dead_link_ends_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = _coordinators(tmp_path, n=2)[0]
    _quick(coordinator, tmp_path, reattest_s=0.05)
    quote_asked, rounds = asyncio.Event(), 0

    async def slow_quotes(_used: InUse) -> None:
        quote_asked.set()
        await asyncio.sleep(30)  # a restarting peer that answers late

    async def tick(_mesh: Transport, _link: object) -> bool:
        nonlocal rounds
        rounds += 1
        if quote_asked.is_set() and rounds > 20:
            raise PeerLostError("party 1 is not connected")  # the round notices the dead peer
        await asyncio.sleep(0.005)
        return False

    _patch(monkeypatch, coordinator, slow_quotes, tick)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(PeerLostError):
                await coordinator._rounds(NO_MESH, NO_LINK, NO_DEALER)
        assert quote_asked.is_set()
        assert rounds > 20  # rounds ran while the quote was outstanding
        assert "session-reattest" not in {t.get_name() for t in asyncio.all_tasks()}
    finally:
        coordinator.store.close()


async def test_a_failed_re_attestation_still_ends_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = _coordinators(tmp_path, n=2)[0]
    _quick(coordinator, tmp_path, reattest_s=0.05)

    async def refused(_used: InUse) -> None:
        raise PeerError("party1 re-attested with another signing key; session ended")

    async def tick(_mesh: Transport, _link: object) -> bool:
        await asyncio.sleep(0.005)
        return False

    _patch(monkeypatch, coordinator, refused, tick)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(PeerError, match="another signing key"):
                await coordinator._rounds(NO_MESH, NO_LINK, NO_DEALER)
    finally:
        coordinator.store.close()
