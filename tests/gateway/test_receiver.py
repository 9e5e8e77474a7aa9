"""The fake cluster answers like the real party: duplicate, replay and stale notices."""

from __future__ import annotations

import time

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.services import free_port
from gateway.uplink import AckCheck, Answer, judge_answer
from tecc_contract.envelope import ClusterKey, Sealer
from tecc_contract.keys import KemSuite
from tecc_contract.progress import MAX_AGE_NS, Progress, seal_progress
from tests.contract.helpers import regular_segment
from tests.gateway.receiver import FakeCluster, Platform


async def test_fake_cluster_mirrors_the_party_replay_rules() -> None:
    """Identical bytes: duplicate (acknowledged); other bytes under a held seq: 409 replay."""
    gw = Ed25519PrivateKey.generate()
    cluster = FakeCluster(0, free_port(), Platform(), {"gw": gw.public_key()})
    other = FakeCluster(1, free_port(), Platform(), {"gw": gw.public_key()})  # never started
    sealer = Sealer(
        gateway_id="gw",
        signing_key=gw,
        clusters=[ClusterKey(c.index, KemSuite.X25519, c.public_key) for c in (cluster, other)],
    )
    seg = [regular_segment("s", 5)]
    first = sealer.seal(1, seg, created_ns=1)[0]
    resealed = sealer.seal(1, seg, created_ns=1)[0]  # fresh randomness: other bytes
    assert first != resealed
    await cluster.start()
    try:
        async with aiohttp.ClientSession() as s:

            async def post(path: str, body: bytes) -> tuple[int, bytes]:
                async with s.post(cluster.url + path, data=body, ssl=False) as r:
                    return r.status, await r.read()

            check = AckCheck(
                gateway_id="gw", cluster_id=cluster.service_id, key=cluster.sign_key.public_key()
            )

            def judged(st: int, body: bytes, frame: bytes) -> Answer:
                return judge_answer(st, body, check=check, seq=1, frame=frame)[0]

            assert (await post("/v1/batches", first))[0] == 200
            st, body = await post("/v1/batches", first)
            assert (st, judged(st, body, first)) == (200, Answer.ACKED)
            st, body = await post("/v1/batches", resealed)
            assert st == 409
            assert judged(st, body, resealed) is Answer.CONFLICT
            now = time.time_ns()
            fresh = seal_progress(Progress("gw", "party-0", now - 1, now), gw)
            stale_ns = now - MAX_AGE_NS - 10**9
            stale = seal_progress(Progress("gw", "party-0", stale_ns, stale_ns), gw)
            assert (await post("/v1/progress", fresh))[0] == 200
            assert (await post("/v1/progress", stale))[0] == 409
    finally:
        await cluster.stop()
    assert (cluster.duplicates, cluster.replays, cluster.stale_notices) == (1, 1, 1)
    assert len(cluster.shares) == 1
    assert len(cluster.notices) == 1
