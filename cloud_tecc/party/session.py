"""Forming one MPC session of a party's worker: the mesh with its peers.

:func:`open_mesh` starts the WebSocket mesh with every peer (a peer shard with
standbys: each of its workers' addresses in turn, only its lease holder
listens). The dealer link comes after it: the session's dealer is chosen by
party 0 and announced over this mesh, and the streams are aligned to the
furthest party's batch (:mod:`cloud_tecc.party.dealer_choice`,
:meth:`~cloud_tecc.mpc.dealer_client.DealerLink.align`).
"""

from __future__ import annotations

from cloud_tecc.config import PartyConfig, parse_hostport
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.mpc.handshake import LinkSuite
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport
from tecc_contract.keys import ed25519_public_from_bytes


async def open_mesh(
    cfg: PartyConfig,
    enclave: Enclave,
    peer_keys: dict[int, bytes],
    mpc_session: str,
) -> WsTransport:
    """The mesh with every peer (a peer with standbys: each worker's address in turn)."""
    peers = sorted(peer_keys)
    addresses = {cfg.party: parse_hostport(cfg.mpc_listen)}
    addresses.update({i: cfg.peers[i].mpc_address for i in peers})
    alternates = {i: cfg.peers[i].mpc_candidates[1:] for i in peers}
    return await WsTransport.start(
        MeshConfig(
            party=cfg.party,
            addresses=addresses,
            key=enclave.keys.sign,
            peer_keys={i: ed25519_public_from_bytes(k) for i, k in peer_keys.items()},
            round_timeout=60.0,
            connect_timeout=30.0,
            suite=LinkSuite.from_label(cfg.suite.value),
            session=mpc_session,
            alternates={i: a for i, a in alternates.items() if a},
        )
    )
