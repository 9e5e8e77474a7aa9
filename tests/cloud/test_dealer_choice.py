"""Party 0 chooses the shard's dealer, every party follows (cloud_tecc/party/dealer_choice.py).

Real dealer services and dealer links on loopback; the control rounds go over
the in-memory mesh, and attestation is a stand-in that answers for the dealers
marked up (the process test, test_cloud_dealer_standby.py, attests for real).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from cloud_tecc.config import Endpoint
from cloud_tecc.errors import PeerError
from cloud_tecc.mpc.correlations import Kind, Plan
from cloud_tecc.mpc.dealer_client import DealerLink
from cloud_tecc.mpc.dealer_server import DealerService
from cloud_tecc.mpc.errors import MpcError
from cloud_tecc.mpc.transport import MemoryNetwork
from cloud_tecc.party.dealer_choice import Attest, Connect, DealerChoice, InUse, _Attempt
from cloud_tecc.party.messages import SeqMessage
from demo.services import free_port
from tecc_contract.attestation import VerifiedIdentity

PARTY_KEYS = [Ed25519PrivateKey.generate() for _ in range(2)]


class Dealers:
    """Dealer services by service id, each with its own key; ``up`` ones attest."""

    def __init__(self, names: Sequence[str]) -> None:
        self.keys = {n: Ed25519PrivateKey.generate() for n in names}
        self.ports = {n: free_port() for n in names}
        self.services: dict[str, DealerService] = {}
        self.unreachable: dict[int, set[str]] = {0: set(), 1: set()}  # party -> dealers

    def endpoint(self, name: str) -> Endpoint:
        port = self.ports[name]
        return Endpoint(service_id=name, url=f"http://127.0.0.1:{port}", mpc=f"127.0.0.1:{port}")

    async def start(self, name: str) -> None:
        svc = DealerService(
            n=2,
            plan=Plan(triples=50),
            depth=4,  # a link reads 4 ahead before it hands out one (dealer_client.GROUP)
            key=self.keys[name],
            party_keys={i: k.public_key() for i, k in enumerate(PARTY_KEYS)},
        )
        await svc.start("127.0.0.1", self.ports[name])
        self.services[name] = svc

    async def stop(self, name: str) -> None:
        await self.services.pop(name).close()

    def attest(self, party: int) -> Attest:
        async def attest(ep: Endpoint, fresh: bool) -> VerifiedIdentity:
            if ep.service_id not in self.services or ep.service_id in self.unreachable[party]:
                raise PeerError(f"{ep.service_id} refused: connection refused")
            key = self.keys[ep.service_id].public_key().public_bytes_raw()
            return VerifiedIdentity("dealer", ep.service_id, b"", {"sign": key}, "x25519", 0, "")

        return attest

    def connect(self, party: int) -> Connect:
        async def connect(ep: Endpoint, ident: VerifiedIdentity) -> DealerLink:
            host, port = ep.mpc_address
            return await DealerLink.connect(
                f"http://{host}:{port}/dealer",
                party=party,
                key=PARTY_KEYS[party],
                dealer_key=self.keys[ep.service_id].public_key(),
                wait_s=10,
                connect_s=2,
            )

        return connect

    async def close(self) -> None:
        for name in list(self.services):
            await self.stop(name)


async def _session(
    choices: Sequence[DealerChoice], dealers: Dealers
) -> list[InUse | BaseException]:
    net = MemoryNetwork(2, timeout=3.0)
    return await asyncio.gather(
        *(
            c.start(net.transport(i), (1 - i,), dealers.attest(i), dealers.connect(i))
            for i, c in enumerate(choices)
        ),
        return_exceptions=True,
    )


async def _close(used: Sequence[InUse | BaseException]) -> None:
    for u in used:
        if isinstance(u, InUse):
            await u.link.close()


def _choices(lists: Sequence[Sequence[Endpoint]]) -> list[DealerChoice]:
    return [DealerChoice(eps, party=i, registry=CollectorRegistry()) for i, eps in enumerate(lists)]


async def _triples_match(used: Sequence[InUse | BaseException]) -> bool:
    a, b = [await u.link.take(Kind.TRIPLE, 40) for u in used if isinstance(u, InUse)]
    x = a.fields["a"] + b.fields["a"]
    y = a.fields["b"] + b.fields["b"]
    return bool(np.array_equal(x * y, a.fields["c"] + b.fields["c"]))


async def test_all_parties_use_the_first_dealer_that_answers_and_move_on_its_loss() -> None:
    """A down first dealer is passed over; the chosen one's loss moves both to the next."""
    dealers = Dealers(["dealer", "dealer2", "dealer3"])
    await dealers.start("dealer2")
    await dealers.start("dealer3")
    eps = [dealers.endpoint(n) for n in ("dealer", "dealer2", "dealer3")]
    choices = _choices([eps, eps])
    try:
        used = await _session(choices, dealers)
        assert [u.endpoint.service_id for u in used if isinstance(u, InUse)] == ["dealer2"] * 2
        assert {u.generation for u in used if isinstance(u, InUse)} == {1}
        assert await _triples_match(used)  # the correlations of one dealer, aligned
        await _close(used)
        await dealers.stop("dealer2")  # the dealer in use dies: the next session moves on
        used = await _session(choices, dealers)
        assert [u.endpoint.service_id for u in used if isinstance(u, InUse)] == ["dealer3"] * 2
        assert await _triples_match(used)
        await _close(used)
        for c in choices:
            assert c.health().in_use == "dealer3"
            assert c.health().failovers == 1
            assert c.health().generation == 2
    finally:
        await dealers.close()


async def test_a_dealer_one_follower_cannot_reach_is_set_aside() -> None:
    """No session on a dealer not every party reaches; the next session takes the next one."""
    dealers = Dealers(["dealer", "dealer2"])
    await dealers.start("dealer")
    await dealers.start("dealer2")
    dealers.unreachable[1] = {"dealer"}
    eps = [dealers.endpoint(n) for n in ("dealer", "dealer2")]
    choices = _choices([eps, eps])
    try:
        used = await _session(choices, dealers)
        assert all(isinstance(u, PeerError) for u in used), used
        assert "dealer dealer not reachable by every party (party 1:" in str(used[0])
        assert choices[0].order() == [1, 0]
        used = await _session(choices, dealers)
        assert [u.endpoint.service_id for u in used if isinstance(u, InUse)] == ["dealer2"] * 2
        await _close(used)
    finally:
        await dealers.close()


async def test_a_follower_with_another_dealer_list_refuses() -> None:
    """Party 1 does not hold party 0's choice at that index: no session, the key is named."""
    dealers = Dealers(["dealer", "dealer2", "other"])
    await dealers.start("dealer2")
    await dealers.start("other")
    mine = [dealers.endpoint(n) for n in ("dealer", "dealer2")]
    theirs = [dealers.endpoint(n) for n in ("dealer", "other")]
    try:
        used = await _session(_choices([mine, theirs]), dealers)
        assert isinstance(used[1], PeerError)
        assert "list the same dealers in the same order" in str(used[1])
        assert isinstance(used[0], MpcError | PeerError)  # its peer left the session
    finally:
        await dealers.close()


def test_a_peer_on_another_generation_is_refused() -> None:
    """Seq messages naming another dealer or generation end the session before any use."""
    dealers = Dealers(["dealer"])
    choice = _choices([[dealers.endpoint("dealer")]])[0]
    att = _Attempt(0, dealers.endpoint("dealer"), 3)
    choice._check(att, {1: SeqMessage(seq=4, dealer="dealer", generation=3)})
    with pytest.raises(PeerError, match="would not match"):
        choice._check(att, {1: SeqMessage(seq=4, dealer="dealer", generation=2)})
    with pytest.raises(PeerError, match="would not match"):
        choice._check(att, {1: SeqMessage(seq=4, dealer="dealer2", generation=3)})


async def _drain(link: DealerLink) -> None:
    """Take until the link fails: the batches read ahead, then the failure."""
    for _ in range(1000):
        await link.take(Kind.TRIPLE, 50)


async def test_a_link_whose_dealer_died_says_lost() -> None:
    """``DealerLink.lost``: false while linked and after a close, true once the dealer died."""
    dealers = Dealers(["dealer"])
    await dealers.start("dealer")
    ep = dealers.endpoint("dealer")
    ident = await dealers.attest(0)(ep, True)
    link = await dealers.connect(0)(ep, ident)
    healthy = await dealers.connect(1)(ep, ident)
    try:
        await link.next_seq()
        assert not link.lost
        await healthy.close()
        assert not healthy.lost  # closed here, not lost
        await dealers.stop("dealer")
        with pytest.raises(MpcError, match="dealer link failed"):
            await _drain(link)
        assert link.lost
    finally:
        await link.close()
        await dealers.close()
