"""One party in the JetStream layout: real nats-server, frontend and worker processes, HTTPS.

The frontends ack a frame only once the log holds it (503 + Retry-After while
JetStream is down, the frame stored after it is back); a frame sent through two
frontends is stored once; a worker SIGKILLed mid-stream loses and duplicates
nothing; an R=3 log survives a node's death; malformed log messages are
counted and skipped.
"""

from __future__ import annotations

import asyncio
import signal
import time
from functools import partial
from pathlib import Path

import nats
import pytest

from cloud_tecc.jetstream.server import NatsDeployment, start_cluster, start_node
from cloud_tecc.jetstream.sharelog import SHARES
from demo.devstack.deployment import Deployment, http_json
from tecc_contract.progress import Progress, seal_progress
from tests.cloud.services import metric

from .logstack import GW, deployment, frame, post, post_until_acked, sealer, stored, wait_for

pytestmark = pytest.mark.processes


def _servers(nd: NatsDeployment) -> list[str]:
    return [f"nats://127.0.0.1:{n.spec.port}" for n in nd.nodes]


def _messages(nd: NatsDeployment) -> int:
    async def go() -> int:
        nc = await nats.connect(servers=nd.servers, connect_timeout=2)
        try:
            info = await nc.jetstream().stream_info(SHARES)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(go())


def _connected(url: str) -> bool:
    return bool(http_json(url + "/healthz")[1]["log_connected"])


def _start(dep: Deployment, frontends: int) -> list[str]:
    """The worker first (it creates the sealed keys), then the frontends, log connected."""
    dep.start("party0")
    dep.wait_healthy("party0")
    names = [dep.add_frontend("party0") for _ in range(frontends)]
    for fe in names:
        dep.start(fe)
    for fe in names:
        dep.wait_healthy(fe)
        wait_for(partial(_connected, dep.url(fe)), what=f"{fe} on the log")
    return names


def test_frontend_acks_only_once_the_log_has_the_part(tmp_path: Path) -> None:
    with start_node(tmp_path / "party0" / "nats") as nd:
        dep = deployment(tmp_path, {"servers": _servers(nd)})
        try:
            (fe,) = _start(dep, 1)
            s = sealer(dep, dep.url(fe))
            status, body, _ = post(f"{dep.url(fe)}/v1/batches", frame(s, 1))
            assert (status, body["status"]) == (200, "accepted")
            assert body["ack"]
            assert _messages(nd) == 1  # in the stream when the ack came back
            nd.nodes[0].kill()
            f2 = frame(s, 2)
            status, body, headers = post(f"{dep.url(fe)}/v1/batches", f2)
            assert status == 503
            assert body == {"status": "rejected", "reason": "overloaded"}  # no ack
            assert int(headers["Retry-After"]) >= 1
            sample = 'tecc_ingest_rejected_total{reason="overloaded"}'
            assert metric(dep, fe, sample) >= 1
            nd.nodes[0].start()
            nd.nodes[0].wait_ready()
            # the refused publish may still have reached the log on reconnect: then the
            # retry is a duplicate, acked all the same (the Nats-Msg-Id dedup)
            acked = post_until_acked(f"{dep.url(fe)}/v1/batches", f2)
            assert acked["status"] in {"accepted", "duplicate"}
            assert acked["ack"]
            assert _messages(nd) == 2
            wait_for(lambda: stored(dep) == {(GW, 1): 20, (GW, 2): 20}, what="both stored")
        finally:
            dep.stop_all()


def test_one_frame_through_two_frontends_is_stored_once(tmp_path: Path) -> None:
    with start_node(tmp_path / "party0" / "nats") as nd:
        dep = deployment(tmp_path, {"servers": _servers(nd)})
        try:
            a, b = _start(dep, 2)
            s = sealer(dep, dep.url(b))  # every frontend presents the party's quote
            f1 = frame(s, 1)
            assert post(f"{dep.url(a)}/v1/batches", f1)[1]["status"] == "accepted"
            status, body, _ = post(f"{dep.url(b)}/v1/batches", f1)
            assert (status, body["status"]) == (200, "duplicate")
            assert body["ack"]
            status, body, _ = post(f"{dep.url(b)}/v1/batches", frame(s, 1, n=3))
            assert (status, body["reason"]) == (409, "replay")
            assert _messages(nd) == 1
            wait_for(lambda: stored(dep) == {(GW, 1): 20}, what="stored once")
            # progress through a frontend reaches the worker's tracker (after the shares)
            now = time.time_ns()
            notice = seal_progress(Progress(GW, "party0", now - 10**9, now), dep.signing_key(GW))
            assert post(f"{dep.url(a)}/v1/progress", notice)[:2] == (200, {"status": "noted"})

            def declared() -> bool:
                gws = http_json(dep.url("party0") + "/healthz")[1]["gateways"]
                return bool(gws[GW]["through_s"] == (now - 10**9) / 1e9)

            wait_for(declared, what="progress at the worker")
            time.sleep(0.5)
            assert stored(dep) == {(GW, 1): 20}
        finally:
            dep.stop_all()


def test_worker_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with start_node(tmp_path / "party0" / "nats") as nd:
        dep = deployment(tmp_path, {"servers": _servers(nd)})
        try:
            fes = _start(dep, 2)
            s = sealer(dep, dep.url(fes[0]))
            n = 60
            for seq in range(1, n + 1):
                if seq == 20:
                    dep.stop("party0", signal.SIGKILL)
                if seq == 40:
                    dep.start("party0")
                fe = fes[seq % 2]
                assert post_until_acked(f"{dep.url(fe)}/v1/batches", frame(s, seq))["ack"]
            want = {(GW, seq): 20 for seq in range(1, n + 1)}
            wait_for(lambda: stored(dep) == want, what="every batch stored")
            assert _messages(nd) == n
            assert dep.procs["party0"].poll() is None
        finally:
            dep.stop_all()


def test_r3_log_loses_nothing_when_a_node_dies(tmp_path: Path) -> None:
    with start_cluster(tmp_path / "party0" / "nats") as nd:
        dep = deployment(tmp_path, {"servers": _servers(nd), "replicas": 3})
        try:
            (fe,) = _start(dep, 1)
            s = sealer(dep, dep.url(fe))
            n = 30
            for seq in range(1, n + 1):
                if seq == 10:
                    nd.nodes[0].kill()
                assert post_until_acked(f"{dep.url(fe)}/v1/batches", frame(s, seq))["ack"]
            want = {(GW, seq): 20 for seq in range(1, n + 1)}
            wait_for(lambda: stored(dep) == want, timeout=60, what="every batch stored")
        finally:
            dep.stop_all()


def test_malformed_log_messages_are_counted_and_skipped(tmp_path: Path) -> None:
    with start_node(tmp_path / "party0" / "nats") as nd:
        dep = deployment(tmp_path, {"servers": _servers(nd)})
        try:
            (fe,) = _start(dep, 1)
            s = sealer(dep, dep.url(fe))

            async def junk() -> None:
                nc = await nats.connect(servers=nd.servers, connect_timeout=2)
                js = nc.jetstream()
                await js.publish(f"tecc.shares.0.{GW}", b"not a part")
                await js.publish(f"tecc.shares.0.{GW}", b"\x07" + b"\x90")
                await js.publish(f"tecc.progress.{GW}", b"not a notice")
                await nc.close()

            asyncio.run(junk())
            assert post(f"{dep.url(fe)}/v1/batches", frame(s, 5))[1]["status"] == "accepted"
            wait_for(lambda: stored(dep) == {(GW, 5): 20}, what="the valid part stored")
            wait_for(
                lambda: metric(dep, "party0", 'tecc_log_malformed_total{stream="shares"}') == 2,
                what="two malformed parts counted",
            )
            assert metric(dep, "party0", 'tecc_log_malformed_total{stream="progress"}') == 1
            assert dep.procs["party0"].poll() is None
        finally:
            dep.stop_all()


def test_embedded_node_outlives_a_killed_worker_and_is_replaced_on_restart(
    tmp_path: Path,
) -> None:
    dep = deployment(tmp_path, {"embedded": True})
    try:
        (fe,) = _start(dep, 1)
        s = sealer(dep, dep.url(fe))
        node_dir = dep.state_dir("party0") / "nats"
        port = (node_dir / "embedded.port").read_text()
        old = int((node_dir / "embedded.pid").read_text())
        for seq in range(1, 6):
            assert post_until_acked(f"{dep.url(fe)}/v1/batches", frame(s, seq))["ack"]
        dep.stop("party0", signal.SIGKILL)
        for seq in range(6, 11):  # the orphaned node still takes the frontend's parts
            assert post_until_acked(f"{dep.url(fe)}/v1/batches", frame(s, seq))["ack"]
        dep.start("party0")
        dep.wait_healthy("party0")
        wait_for(lambda: int((node_dir / "embedded.pid").read_text()) != old, what="new node")
        assert (node_dir / "embedded.port").read_text() == port  # frontends keep their URL
        assert not Path(f"/proc/{old}").exists()
        for seq in range(11, 16):
            assert post_until_acked(f"{dep.url(fe)}/v1/batches", frame(s, seq))["ack"]
        want = {(GW, seq): 20 for seq in range(1, 16)}
        wait_for(lambda: stored(dep) == want, what="every batch stored")
    finally:
        dep.stop_all()
