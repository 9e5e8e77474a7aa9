"""The uplink's cost of TLS: one cluster link draining a spool over HTTPS vs plain HTTP.

Part of ``python -m bench.gateway``. A spool is filled with batches of 1,000
readings sealed for two clusters; a :class:`~gateway.uplink.ClusterLink`
(the agent's own code: attestation, TLS pin, POST, signed-ack check, spool
delete) drains cluster 0's cursor into a minimal receiver in this process
that answers every frame with a signed acknowledgement. The receiver serves
HTTPS with an attested key (claim ``tls_spki``) or plain HTTP (``tls: off``);
the two variants alternate and the best of each is reported with the ratio.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._report import emit
from cloud_tecc.enclave.tls import generate_tls_key, listener_tls
from demo.services import free_port
from gateway.config import ClusterConfig, SensorConfig
from gateway.ingest import Ingest
from gateway.metrics import Metrics
from gateway.spool import PinnedKey, Spool
from gateway.uplink import ClusterLink, UplinkOptions
from tecc_contract.ack import Ack, Outcome, frame_digest, seal_ack
from tecc_contract.attestation import TLS_CLAIM, Quote, SimulatedPlatformVerifier, sign_quote
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment, read_header
from tecc_contract.fixedpoint import SensorRange
from tecc_contract.keys import KemSuite, generate_cluster_keypair

MEASUREMENT = b"\x42" * 32
GATEWAY = "gw-bench"


class _Receiver:
    """Quote with a ``tls_spki`` claim (when TLS), a signed ack for every frame."""

    def __init__(self, tls: bool, platform: Ed25519PrivateKey, hpke: bytes) -> None:
        self.port = free_port()
        self.tls = tls
        self.platform = platform
        self.hpke = hpke
        self.sign = Ed25519PrivateKey.generate()
        self.ctx, self.spki = listener_tls(generate_tls_key(), "p0", [])
        self.runner: web.AppRunner | None = None

    async def _quote(self, req: web.Request) -> web.Response:
        q = Quote(
            role="party",
            service_id="p0",
            measurement=MEASUREMENT,
            keys={"hpke": self.hpke, "sign": self.sign.public_key().public_bytes_raw()},
            nonce=bytes.fromhex(req.query["nonce"]),
            issued_ns=time.time_ns(),
            platform_key_id="bench",
            claims={TLS_CLAIM: self.spki} if self.tls else {},
        )
        return web.json_response(sign_quote(q, self.platform).to_json())

    async def _batch(self, req: web.Request) -> web.Response:
        frame = await req.read()
        h = read_header(frame)
        ack = Ack(h.gateway_id, "p0", h.seq, frame_digest(frame), Outcome.STORED)
        signed = seal_ack(ack, self.sign)
        return web.json_response({"status": "accepted", "ack": base64.b64encode(signed).decode()})

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/attestation", self._quote)
        app.router.add_post("/v1/batches", self._batch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        ssl_ctx = self.ctx if self.tls else None
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ssl_ctx).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _frames(n: int, keys: list[bytes]) -> list[list[bytes]]:
    sealer = Sealer(
        gateway_id=GATEWAY,
        signing_key=Ed25519PrivateKey.generate(),
        clusters=[ClusterKey(i, KemSuite.X25519, k) for i, k in enumerate(keys)],
    )
    ts = time.time_ns() + np.arange(1000, dtype=np.int64) * 1_000_000
    vals = np.linspace(10.0, 90.0, 1000)
    return [
        sealer.seal(s + 1, [SensorSegment("s0", ts + s * 10**9, vals)], created_ns=time.time_ns())
        for s in range(n)
    ]


async def _drain(tmp: Path, tls: bool, frames: list[list[bytes]], hpke: list[bytes]) -> float:
    """Batches/s of one link draining ``frames`` to a receiver with or without TLS."""
    platform = Ed25519PrivateKey.generate()
    recv = _Receiver(tls, platform, hpke[0])
    await recv.start()
    spool = Spool(
        tmp / f"spool-{tls}-{os.urandom(4).hex()}.db",
        gateway_id=GATEWAY,
        n_clusters=2,
        spool_key=os.urandom(32),
        max_bytes=1 << 34,
    )
    for i, k in enumerate(hpke):
        spool.pin(PinnedKey(i, f"p{i}", "x25519", k))
    for seq, fs in enumerate(frames, start=1):
        spool.append(seq, time.time_ns(), 1000, fs)
    scheme = "https" if tls else "http"
    cfg = ClusterConfig(0, f"{scheme}://127.0.0.1:{recv.port}", "p0", "party", tls=tls)
    verifier = SimulatedPlatformVerifier(
        platform_keys={"bench": platform.public_key()}, allowed_measurements=[MEASUREMENT]
    )
    metrics = Metrics(Ingest({"s0": SensorConfig("s0", SensorRange(0, 100), "")}))
    try:
        async with aiohttp.ClientSession() as session:
            link = ClusterLink(
                cfg,
                spool=spool,
                verifier=verifier,
                metrics=metrics,
                session=session,
                on_pin=lambda _k: None,
                options=UplinkOptions(gateway_id=GATEWAY, expected_suite="x25519"),
            )
            t0 = time.perf_counter()
            task = asyncio.create_task(link.run())
            while spool.depth(0) > 0:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
            dt = time.perf_counter() - t0
            task.cancel()
    finally:
        spool.close()
        await recv.stop()
    return len(frames) / dt


def measure(quick: bool) -> dict[str, Any]:
    """``uplink_tls_batches_per_s``, ``uplink_plain_batches_per_s`` and their ratio."""
    n, rounds = (1000, 2) if quick else (3000, 3)
    hpke = [generate_cluster_keypair(KemSuite.X25519)[1] for _ in range(2)]
    frames = _frames(n, hpke)
    best: dict[bool, float] = {True: 0.0, False: 0.0}
    with tempfile.TemporaryDirectory() as td:
        for _ in range(rounds):
            for tls in (True, False):
                best[tls] = max(best[tls], asyncio.run(_drain(Path(td), tls, frames, hpke)))
    return {
        "uplink_tls_batches_per_s": round(best[True], 1),
        "uplink_plain_batches_per_s": round(best[False], 1),
        "uplink_tls_vs_plain": round(best[True] / best[False], 3),
        "uplink_mean_frame_bytes": round(sum(len(f[0]) for f in frames) / len(frames)),
    }


if __name__ == "__main__":
    emit(measure("--quick" in sys.argv))
