"""Which dealer a shard's session uses: party 0 chooses, announces, every party follows.

A party's file may list several dealers for its shard (``dealer:`` as a list,
the same list in every party's file). Correlations of two dealers must never
meet in one computation, so the N parties of a session use one dealer, chosen
once per session (docs/CLOUD.md "Dealer standby"):

1. Party 0 takes the listed dealers in order — those a follower recently could
   not reach last — and uses the first whose dealer link forms under its
   verified identity (cached, then once under a fresh quote if the handshake
   failed: a dealer restarted with new keys).
2. It announces ``{"dealer": {index, service_id, generation}}`` over the
   session's attested mesh; ``generation`` counts its announcements.
3. Every follower checks the announced entry against its own list, attests that
   dealer and links to it; then all N exchange ``{"seq", "dealer", "generation"}``
   (or ``error``). The session computes only if every party linked to the same
   dealer under the same generation; the correlation streams are then aligned
   to the furthest party, as after a dealer restart. A follower that cannot
   reach the dealer says so: party 0 sets that dealer aside for
   :data:`AVOID_S` and the next session tries the next one.

When the dealer in use dies the session ends (the link fails at the next
batch), and the next session is this choice again: the dead dealer does not
answer, so the next in the list is used. No state passes between dealers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_tecc.config import Endpoint
from cloud_tecc.errors import CloudError, PeerError
from cloud_tecc.mpc.dealer_client import DealerLink
from cloud_tecc.mpc.errors import MpcError
from cloud_tecc.mpc.transport import Transport
from cloud_tecc.party.messages import DealerMessage, SeqMessage
from cloud_tecc.party.rounds import control
from cloud_tecc.service.health import DealerUseHealth
from tecc_contract.attestation import VerifiedIdentity

log = logging.getLogger("cloud_tecc.party.dealer_choice")
#: How long party 0 tries a dealer a follower could not reach only after the others.
AVOID_S: Final = 30.0
#: What a dealer that fails to attest or to link raises here.
DEALER_FAULTS: Final = (CloudError, MpcError, aiohttp.ClientError, OSError, TimeoutError)

#: The verified identity of a dealer (``True``: a fresh quote, not a cached one).
Attest = Callable[[Endpoint, bool], Awaitable[VerifiedIdentity]]
#: Opens this party's link to a dealer whose identity was just verified.
Connect = Callable[[Endpoint, VerifiedIdentity], Awaitable[DealerLink]]


@dataclass(frozen=True, slots=True)
class InUse:
    """The dealer of the running session: its list index, endpoint, identity and link."""

    index: int
    endpoint: Endpoint
    identity: VerifiedIdentity
    link: DealerLink
    generation: int


@dataclass(frozen=True, slots=True)
class _Attempt:
    """This party's try at the session's dealer: linked, or the error it met."""

    index: int
    endpoint: Endpoint
    generation: int
    identity: VerifiedIdentity | None = None
    link: DealerLink | None = None
    error: str = ""

    def announcement(self) -> dict[str, Any]:
        """Party 0's ``dealer`` control document."""
        return {
            "index": self.index,
            "service_id": self.endpoint.service_id,
            "generation": self.generation,
        }


class DealerChoice:
    """One party's view of its shard's dealers: the choice, the metrics, ``/healthz``."""

    def __init__(
        self,
        dealers: Sequence[Endpoint],
        *,
        party: int,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dealers, self.party, self._clock = tuple(dealers), party, clock
        self.generation = 0  # party 0: announcements made; followers: the last followed
        self.active: int | None = None
        self._avoid: dict[int, float] = {}  # dealer index -> set aside until (clock)
        self.failed_over = 0  # sessions that moved to another dealer (also a counter)
        self.in_use = Gauge(
            "tecc_party_dealer_in_use",
            "1 for the dealer of the running (or last) session, by dealer service id",
            ["dealer"],
            registry=registry,
        )
        for ep in self.dealers:
            self.in_use.labels(ep.service_id).set(0)
        self.failovers = Counter(
            "tecc_party_dealer_failovers",
            "Sessions that started on another dealer than the session before",
            registry=registry,
        )
        self.generation_gauge = Gauge(
            "tecc_party_dealer_generation",
            "Generation of the dealer choice in use (party 0 counts its announcements)",
            registry=registry,
        )

    def order(self) -> list[int]:
        """Party 0's order to try the dealers: the list, set-aside ones last."""
        now = self._clock()
        fresh = [i for i in range(len(self.dealers)) if self._avoid.get(i, 0.0) <= now]
        return fresh + [i for i in range(len(self.dealers)) if i not in fresh]

    def set_aside(self, index: int) -> None:
        """A follower could not reach ``dealer[index]``: try it last for :data:`AVOID_S`."""
        self._avoid[index] = self._clock() + AVOID_S

    def use(self, index: int, generation: int) -> None:
        """Record that the session now starting uses ``dealer[index]`` (metrics, health)."""
        if self.active is not None and self.active != index:
            self.failovers.inc()
            self.failed_over += 1
            log.warning(
                "shard dealer moved from %s to %s (generation %d)",
                self.dealers[self.active].service_id,
                self.dealers[index].service_id,
                generation,
            )
        if self.active is not None:
            self.in_use.labels(self.dealers[self.active].service_id).set(0)
        self.active, self.generation = index, generation
        self.in_use.labels(self.dealers[index].service_id).set(1)
        self.generation_gauge.set(generation)

    def health(self) -> DealerUseHealth:
        """``/healthz`` ``dealer``: the one in use, its generation, failovers, the list."""
        return DealerUseHealth(
            in_use=None if self.active is None else self.dealers[self.active].service_id,
            generation=self.generation,
            failovers=self.failed_over,
            listed=tuple(ep.service_id for ep in self.dealers),
        )

    async def start(
        self,
        mesh: Transport,
        peers: tuple[int, ...],
        attest: Attest,
        connect: Connect,
    ) -> InUse:
        """Agree on this session's dealer with every peer and link to it, aligned.

        Raises (ending the session) when party 0 finds no dealer, when a party
        cannot link to the announced one, or when the parties name different ones.
        """
        att: _Attempt | None = None
        try:
            if self.party == 0:
                att = await self._choose(attest, connect)
                await control(mesh, peers, {"dealer": att.announcement()}, DealerMessage)
            else:
                got = await control(mesh, peers, {}, DealerMessage)
                att = await self._follow(got[0], attest, connect)
            ep, link = att.endpoint, att.link
            seq = 0 if link is None else await link.next_seq()
            mine: dict[str, Any] = {"seq": seq, "dealer": ep.service_id}
            mine["generation"] = att.generation
            if att.error:
                mine["error"] = att.error[:500]
            theirs = await control(mesh, peers, mine, SeqMessage)
            self._check(att, theirs)
            if link is None or att.identity is None:  # _check raised for a failed attempt
                raise PeerError(f"no link to dealer {ep.service_id}")
            await link.align(max(mine["seq"], *(m.seq for m in theirs.values())))
        except BaseException:
            if att is not None and att.link is not None:
                await att.link.close()
            raise
        self.use(att.index, att.generation)
        return InUse(att.index, ep, att.identity, link, att.generation)

    async def _choose(self, attest: Attest, connect: Connect) -> _Attempt:
        """Party 0: the first dealer (in :meth:`order`) that attests now and links."""
        failures = []
        for index in self.order():
            ep = self.dealers[index]
            try:
                link, ident = await self._link(ep, attest, connect)
            except DEALER_FAULTS as exc:
                failures.append(f"{ep.service_id}: {exc}")
                continue
            self.generation += 1
            return _Attempt(index, ep, self.generation, ident, link)
        raise PeerError("no dealer of the shard answers: " + "; ".join(failures))

    @staticmethod
    async def _link(
        ep: Endpoint, attest: Attest, connect: Connect
    ) -> tuple[DealerLink, VerifiedIdentity]:
        """Link to ``ep`` under its verified identity: the cached one first (a warm
        standby's takeover fetches no quote; the link's handshake proves the dealer is
        up and holds that key), then once under a fresh quote when the handshake is
        what failed (the dealer restarted with new keys). A refused or timed-out
        connection is not retried: that dealer is down, try the next."""
        ident = await attest(ep, False)
        try:
            return await connect(ep, ident), ident
        except (CloudError, MpcError):
            ident = await attest(ep, True)
            return await connect(ep, ident), ident

    async def _follow(self, msg: DealerMessage, attest: Attest, connect: Connect) -> _Attempt:
        """A follower: the announced dealer, checked against this party's list, linked."""
        doc = msg.dealer
        if doc is None:
            raise PeerError("party 0 announced no dealer for the session")
        if doc.index >= len(self.dealers) or self.dealers[doc.index].service_id != doc.service_id:
            mine = [ep.service_id for ep in self.dealers]
            raise PeerError(
                f"party 0 uses dealer[{doc.index}] {doc.service_id!r}, which this party's "
                f"dealer list {mine} does not hold there: list the same dealers in the same "
                "order in every party's file"
            )
        ep = self.dealers[doc.index]
        try:
            ident = await attest(ep, False)
            link = await connect(ep, ident)
        except DEALER_FAULTS as exc:
            log.warning("cannot use dealer %s that party 0 chose: %s", ep.service_id, exc)
            return _Attempt(doc.index, ep, doc.generation, error=str(exc) or type(exc).__name__)
        return _Attempt(doc.index, ep, doc.generation, ident, link)

    def _check(self, att: _Attempt, theirs: dict[int, SeqMessage]) -> None:
        """Every party linked to the dealer under the generation; PeerError naming who did not."""
        ep = att.endpoint
        failed = {p: m.error for p, m in theirs.items() if m.error}
        if att.error:
            failed[self.party] = att.error
        if failed:
            if self.party == 0:
                self.set_aside(att.index)
            who = "; ".join(f"party {p}: {e}" for p, e in sorted(failed.items()))
            raise PeerError(f"dealer {ep.service_id} not reachable by every party ({who})")
        want = (ep.service_id, att.generation)
        wrong = {p: (m.dealer, m.generation) for p, m in theirs.items()}
        wrong = {p: v for p, v in wrong.items() if v != want}
        if wrong:
            raise PeerError(
                f"parties follow other dealers than {ep.service_id} (generation "
                f"{att.generation}): {wrong}; their correlations would not match"
            )
