"""Forming one MPC session of a party's worker: the mesh, the dealer link, the alignment.

:func:`open_links` starts the WebSocket mesh with every peer (a peer shard with
standbys: each of its workers' addresses in turn, only its lease holder
listens) and the dealer link *together* — neither needs the other, and a
takeover's session waits for the slower of the two instead of their sum.
:func:`align` then brings every party's correlation stream to the furthest
party's batch (:meth:`~cloud_tecc.mpc.dealer_client.DealerLink.align`).
"""

from __future__ import annotations

import asyncio
import time

from cloud_tecc.config import PartyConfig, parse_hostport
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.mpc.dealer_client import DealerLink
from cloud_tecc.mpc.handshake import LinkSuite
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from cloud_tecc.party.messages import SeqMessage
from cloud_tecc.party.rounds import control
from tecc_contract.keys import ed25519_public_from_bytes


async def open_links(
    cfg: PartyConfig,
    enclave: Enclave,
    peer_keys: dict[int, bytes],
    dealer_key: bytes,
    mpc_session: str,
) -> tuple[WsTransport, DealerLink]:
    """The mesh with every peer and the link to the dealer, formed concurrently."""
    peers = sorted(peer_keys)
    addresses = {cfg.party: parse_hostport(cfg.mpc_listen)}
    addresses.update({i: cfg.peers[i].mpc_address for i in peers})
    alternates = {i: cfg.peers[i].mpc_candidates[1:] for i in peers}
    suite = LinkSuite.from_label(cfg.suite.value)
    host, port = cfg.dealer.mpc_address
    mesh_up = asyncio.create_task(
        WsTransport.start(
            MeshConfig(
                party=cfg.party,
                addresses=addresses,
                key=enclave.keys.sign,
                peer_keys={i: ed25519_public_from_bytes(k) for i, k in peer_keys.items()},
                round_timeout=60.0,
                connect_timeout=30.0,
                suite=suite,
                session=mpc_session,
                alternates={i: a for i, a in alternates.items() if a},
            )
        )
    )
    link_up = asyncio.create_task(
        DealerLink.connect(
            f"http://{host}:{port}/dealer",
            party=cfg.party,
            key=enclave.keys.sign,
            dealer_key=ed25519_public_from_bytes(dealer_key),
            suite=suite,
            mpc_session=mpc_session,
        )
    )
    try:
        mesh, link = await asyncio.gather(mesh_up, link_up)
    except BaseException:
        for task in (mesh_up, link_up):
            task.cancel()
        for done in await asyncio.gather(mesh_up, link_up, return_exceptions=True):
            if isinstance(done, (WsTransport, DealerLink)):
                await done.close()
        raise
    return mesh, link


async def align(mesh: WsTransport, link: DealerLink, peers: tuple[int, ...]) -> str:
    """Align the dealer streams of all parties; a summary of the steps for the log."""
    t0 = time.perf_counter()
    mine = await link.next_seq()
    t1 = time.perf_counter()
    theirs = await control(mesh, peers, {"seq": mine}, SeqMessage)
    t2 = time.perf_counter()
    target = max(mine, *(m.seq for m in theirs.values()))
    await link.align(target)
    return (
        f"first dealer batch in {1e3 * (t1 - t0):.0f} ms, batch numbers exchanged in "
        f"{1e3 * (t2 - t1):.0f} ms, aligned ({mine} to {target}) in "
        f"{1e3 * (time.perf_counter() - t2):.0f} ms"
    )
