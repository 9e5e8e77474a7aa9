"""With the post-quantum suite the mesh and dealer links agree hybrid ML-KEM-768 + X25519 keys."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.mpc import handshake as hs
from demo.devstack.deployment import Deployment
from tests.cloud.scenario import (
    GATEWAYS,
    POLICY,
    SECOND,
    T0,
    compare,
    declare,
    make_scenario,
    reference,
    wait_epochs,
)
from tests.cloud.services import TestGateway

pytestmark = [pytest.mark.processes, pytest.mark.slow]


async def _hello(port: int, path: str) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}{path}") as ws,
    ):
        msg = await ws.receive(timeout=5)
        data: bytes = msg.data
        return data


def test_pq_suite_runs_the_analytics_over_hybrid_links(tmp_path: Path) -> None:
    """``suite: mlkem768-x25519``: both listeners offer the hybrid KEM; results equal the reference.

    Fails on the code before this change: the links used X25519 alone whatever
    the suite (no suite byte, no ML-KEM key in HELLO).
    """
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    dep = Deployment(tmp_path, POLICY, keys, party_extra={"suite": "mlkem768-x25519"})
    scn = make_scenario()
    try:
        dep.start_all()
        gws = {g: TestGateway(dep, g) for g in GATEWAYS}
        deadline = time.monotonic() + 60
        while dep.wait_healthy("party0")["session"] != "running":
            assert time.monotonic() < deadline, "the MPC session never came up"
            time.sleep(0.2)
        for port, path in ((dep.ports["party0_mpc"], "/mpc"), (dep.ports["dealer_mpc"], "/dealer")):
            hello = asyncio.run(_hello(port, path))
            assert hello.startswith(hs.MAGIC)
            assert hello[len(hs.MAGIC)] == hs.LinkSuite.MLKEM768_X25519
            assert len(hello) > len(hs.MAGIC) + 1 + hs.NONCE + hs.EPH + hs.KEM_PK
        for sec in range(scn.seconds):
            for g, gw in gws.items():
                results = gw.upload(gw.seal(sec, scn.batch(g, sec)))
                assert [(r[0], r[1]["status"]) for r in results] == [(200, "accepted")] * 2
            declare(gws, T0 + (sec + 1) * SECOND)
        wait_epochs(dep, 3)
        compare(dep, reference(scn))
    finally:
        dep.stop_all()
