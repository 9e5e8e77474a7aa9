"""One agreement round of N parties over the mesh: watermarks, proposal, verdicts.

The I/O half of :class:`~cloud_tecc.party.agreement.EpochAgreement` (which
holds the order of the steps): each step is one all-to-all control round
(:data:`CONTROL_ROUND`; every party sends one compact JSON object to every
other party and receives one from each):

1. ``{"wm"}``: the common watermark is the lowest of all N; every party above
   it rewinds (it committed an epoch another party did not).
2. ``{"proposal"}``: the leader (party 0) proposes the next closed epoch with
   its batch list; the followers send ``{}``.
3. ``{"ok", "orphans"}``: every follower checks the proposal against its own
   store and its own gateways' progress notices; every party learns all N
   verdicts, and all compute iff all confirm, so the decision is the same at
   every party. A batch some party holds and another lacks, whose gateway is
   gone, is reported as an orphan by the follower that sees it; the leader
   leaves every reported orphan (whose gateway is gone at the leader too) out
   of its next proposal.

Admission is per party (each party enrols gateways under its own policy), so
a batch enters an epoch only if every party admits its gateway: every verdict
lists the gateways its party refuses (``refused``), every party learns the
union of all N lists, and in the next round the leader skips the batches of
those gateways it holds, the followers accept that skip and ignore the
batches of those gateways they hold, and nobody waits for their progress. A
gateway refused by one party so never stalls the others' windows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from cloud_tecc.config import PartyConfig
from cloud_tecc.mpc.transport import Transport
from cloud_tecc.party.agreement import EpochAgreement, RemoteAgreementError
from cloud_tecc.party.epochs import Key, ProgressTracker, Proposal, epoch_of
from cloud_tecc.party.messages import (
    M,
    ProposalMessage,
    VerdictMessage,
    WatermarkMessage,
    decode,
)
from cloud_tecc.party.store import ShareStore
from cloud_tecc.service.channel import dumps

log = logging.getLogger("cloud_tecc.party.rounds")
CONTROL_ROUND: Final = 0


async def control(
    mesh: Transport, peers: tuple[int, ...], doc: dict[str, Any], reply: type[M]
) -> dict[int, M]:
    """Send ``doc`` to every peer and decode each peer's message of the same control round."""
    raw = dumps(doc)
    got = await mesh.exchange(CONTROL_ROUND, dict.fromkeys(peers, raw))
    return {p: decode(bytes(got[p]), reply, sender=p) for p in peers}


class AgreementRound:
    """Drives one party's :class:`EpochAgreement` over the mesh (see the module docstring)."""

    def __init__(
        self,
        *,
        cfg: PartyConfig,
        store: ShareStore,
        tracker: ProgressTracker,
        agreement: EpochAgreement,
        refusing: Callable[[], Iterable[str]] = tuple,
        map_id: Callable[[int], str | None] = lambda _start: "",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.cfg, self.store, self.tracker, self.agreement = cfg, store, tracker, agreement
        #: The shard map version in force at an epoch's start here (None: no usable map).
        self._map_id = map_id
        self.map_mismatch = Counter(
            "tecc_party_map_mismatch",
            "Epochs refused because a party routes them by another shard map version "
            "(once per epoch)",
            registry=registry,
        )
        self.rounds = Counter(
            "tecc_party_agreement_rounds",
            "Agreement rounds run, by outcome: agreed (the epoch is computed), refused "
            "(proposed, not agreed yet), idle (nothing proposed)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("agreed", "refused", "idle"):
            self.rounds.labels(outcome)
        self._mismatched: int | None = None  # the epoch last counted
        self._waiting_for: tuple[int, str] = (0, "")
        self.skip: set[Key] = set()  # orphaned batches the followers reported (leader only)
        #: The gateways this party does not admit now (its registry; read each round).
        self._refusing = refusing
        #: The gateways some party refused, as all N verdicts of the last round said.
        self.refused: frozenset[str] = frozenset()
        #: The watermark each peer sent in the last round (for ``/healthz``: epochs behind).
        self.peer_watermarks: dict[int, int] = {}
        #: Whether the leader proposed an epoch in the last round (False: nothing closed).
        self.proposed = False

    def _excluded(self) -> frozenset[str]:
        """Gateways whose batches enter no epoch now: refused here or by any party."""
        return self.refused | frozenset(self._refusing())

    async def run(self, mesh: Transport) -> Proposal | None:
        """One round; the agreed proposal to compute now, or None (nothing, or refused)."""
        prop = await self._run(mesh)
        outcome = "agreed" if prop is not None else "refused" if self.proposed else "idle"
        self.rounds.labels(outcome).inc()
        return prop

    async def _run(self, mesh: Transport) -> Proposal | None:
        agreement, peers = self.agreement, self.agreement.peers
        self.proposed = False
        wm = await asyncio.to_thread(self.store.watermark)
        others = await control(mesh, peers, {"wm": wm}, WatermarkMessage)
        self.peer_watermarks = {p: m.wm for p, m in others.items()}
        base = agreement.watermarks(wm, self.peer_watermarks)
        if wm > base:
            log.info("rewinding to the common watermark %d", base)
            await asyncio.to_thread(self.store.rewind, base)
        prop_doc: dict[str, Any] = {}
        mine: Proposal | None = None
        if agreement.leader:
            mine = await asyncio.to_thread(self._propose, base)
            prop_doc = {"proposal": mine.to_json() if mine else None}
        got = await control(mesh, peers, prop_doc, ProposalMessage)
        prop = mine if agreement.leader else self._leaders(got)
        agreement.proposed(prop)
        self.proposed = prop is not None
        if prop is None:
            return None
        own = frozenset(self._refusing())
        here = self._map_id(prop.start_ns)
        orphans: list[Key]
        if here != prop.map:
            why, orphans = self._map_refusal(prop, here), []
        else:
            why, orphans = await asyncio.to_thread(self._check, prop, agreement.leader)
        verdict: dict[str, Any] = {"ok": not why, "orphans": [list(k) for k in orphans]}
        if own:
            verdict["refused"] = sorted(own)
        if here != prop.map:
            verdict["map"] = here or "none"
        acks = await control(mesh, peers, verdict, VerdictMessage)
        theirs = {p: a.map for p, a in acks.items() if isinstance(a.map, str)}
        map_note = ""
        if theirs and agreement.leader:
            self._mismatch(prop.start_ns)
            map_note = (
                f"shard map mismatch for epoch {prop.start_ns}: this party (the leader) uses "
                f"version {prop.map}, {', '.join(f'party {p} {m}' for p, m in theirs.items())}; "
                "make the same shard-map change in every party"
            )
        refused = own.union(*(a.refused_gateways for a in acks.values()))
        if refused != self.refused:
            log.info("gateways refused by some party (left out of epochs): %s", sorted(refused))
            self.refused = refused
        if agreement.leader:
            self._note_orphans([k for a in acks.values() for k in a.orphan_keys])
        if not agreement.verdicts(mine=not why, theirs={p: a.ok for p, a in acks.items()}):
            note = why or map_note or f"refused by parties {list(agreement.refused_by)}"
            if self._waiting_for != (prop.start_ns, note):
                self._waiting_for = (prop.start_ns, note)
                level = logging.WARNING if "shard map mismatch" in note else logging.INFO
                log.log(level, "epoch %d not agreed yet: %s", prop.start_ns, note)
            return None
        return prop

    def _mismatch(self, start_ns: int) -> None:
        if self._mismatched != start_ns:
            self._mismatched = start_ns
            self.map_mismatch.inc()

    def _map_refusal(self, prop: Proposal, here: str | None) -> str:
        """Why a follower refuses an epoch routed by another shard map version (counted)."""
        self._mismatch(prop.start_ns)
        lead = self.agreement.leader_index
        return (
            f"shard map mismatch for epoch {prop.start_ns}: party {lead} uses version "
            f"{prop.map or 'none'}, this party {here or 'none (no usable map here)'}; make the "
            "same change in every party (tecc-cluster admin shard-map show|set)"
        )

    def _leaders(self, got: Mapping[int, ProposalMessage]) -> Proposal | None:
        """The leader's proposal; a follower that proposes breaks the protocol."""
        lead = self.agreement.leader_index
        for p, msg in got.items():
            if p != lead and msg.proposal is not None:
                self.agreement.fault()
                raise RemoteAgreementError(
                    f"party {p} sent a proposal, but only party {lead} proposes epochs"
                )
        doc = got[lead].proposal
        return doc.to_proposal() if doc else None

    def committed(self, prop: Proposal) -> None:
        """The epoch is durable: the orphans it left out are done with."""
        if prop.skip:
            self.skip.clear()

    def _check(self, prop: Proposal, leader: bool) -> tuple[str, list[Key]]:
        """Why this party cannot compute ``prop`` now ("" if it can), and orphaned batches.

        A batch this party lacks, or holds but the proposal lacks, is waited
        for while its gateway is live; once the gateway is gone it is reported
        as an orphan, and the leader leaves it out of its next proposal.
        """
        missing = set(self.store.has_batches(prop.batches))
        if leader:
            return (f"{len(missing)} proposed batches are gone" if missing else ""), []
        excluded = self._excluded()
        if refused := sorted({g for g, _ in prop.batches if g in excluded}):
            return f"the proposal holds batches of gateways refused by a party: {refused[:5]}", []
        live = self.tracker.live(time.time_ns())
        if any(g in live and g not in excluded for g, _ in prop.skip):
            return "the proposal skips batches of a gateway that is live here", []
        extra = {
            k
            for k in self.store.batches_overlapping(prop.start_ns, prop.end_ns)
            if k[0] not in excluded
        }
        extra.difference_update(prop.batches, prop.skip)
        problems = missing | extra
        orphans = sorted(k for k in problems if k[0] not in live)
        if missing:
            return f"{len(missing)} proposed batches not here yet (first {min(missing)})", orphans
        if extra:
            return f"{len(extra)} batches here are not proposed (first {min(extra)})", orphans
        if not self.tracker.closed(prop.end_ns, time.time_ns(), excluded):
            return "not closed by this party's gateway progress notices yet", []
        return "", []

    def _note_orphans(self, reported: list[Key]) -> None:
        """Leader: skip the reported orphans whose gateway is gone here too."""
        live = self.tracker.live(time.time_ns())
        new = {k for k in reported if k[0] not in live} - self.skip
        if new:
            log.warning(
                "leaving out %d orphaned batches (not held by every party, gateway gone): %s",
                len(new),
                sorted(new)[:5],
            )
            self.skip |= new

    def _propose(self, base: int) -> Proposal | None:
        earliest = self.store.earliest_reading_after(base)
        if earliest is None:
            return None
        start, end = epoch_of(earliest, self.cfg.service.policy.window_ns)
        smap = self._map_id(start)
        if smap is None:  # no usable shard map here yet: nothing to agree on
            return None
        excluded = self._excluded()
        if not self.tracker.closed(end, time.time_ns(), excluded):
            return None
        held = self.store.batches_overlapping(start, end)
        skip = self.skip | {k for k in held if k[0] in excluded}
        return Proposal(
            start,
            end,
            tuple(k for k in held if k not in skip),
            tuple(sorted(skip)),
            os.urandom(8).hex(),
            smap,
        )
