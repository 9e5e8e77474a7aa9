"""Helpers of the JetStream process tests: one party's worker, frontends and log on loopback."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.devstack.deployment import LOOPBACK_TLS, Deployment, http_json
from tecc_contract.attestation import Quote, SimulatedPlatformVerifier
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw
from tecc_contract.progress import Progress, seal_progress
from tests.cloud import scenario as cloud_scenario
from tests.cloud.scenario import SECOND, Scenario
from tests.cloud.services import TestGateway

POLICY: dict[str, Any] = {"window_s": 10, "min_count": 1}
T0 = 1_700_000_000_000_000_000
GW = "gw-1"


def deployment(root: Path, jetstream: dict[str, Any], **party0: Any) -> Deployment:
    """A deployment whose party0 is a JetStream shard worker (party1 is never started);
    ``party0`` are further keys of its config."""
    return Deployment(
        root,
        POLICY,
        {GW: Ed25519PrivateKey.generate()},
        party_overrides={"party0": {"jetstream": jetstream, **party0}},
    )


def sealer(dep: Deployment, url: str) -> Sealer:
    """A gateway sealer for party0 (attested at ``url``); party1 gets a throwaway key."""
    platform = dep.platform("party0")
    verifier = SimulatedPlatformVerifier(
        platform_keys={platform.key_id: platform.attestation_key.public_key()},
        allowed_measurements={dep.measurement()},
        platform_services={platform.key_id: {"party0"}},
    )
    nonce = os.urandom(32)
    status, body = http_json(f"{url}/attestation?nonce={nonce.hex()}")
    assert status == 200
    ident = verifier.verify(
        Quote.from_json(body), nonce=nonce, now_ns=time.time_ns(), role="party",
        service_id="party0",
    )  # fmt: skip
    other = generate_cluster_keypair_raw(KemSuite.X25519)[1]
    keys = [
        ClusterKey(0, KemSuite(ident.hpke_suite), ident.keys["hpke"]),
        ClusterKey(1, KemSuite.X25519, other),
    ]
    return Sealer(
        gateway_id=GW,
        signing_key=dep.signing_key(GW),
        clusters=keys,
        columns=(Column.VALUE, Column.SQUARE),
    )


def frame(s: Sealer, seq: int, n: int = 10) -> bytes:
    """Party0's frame of batch ``seq``: ``n`` readings of two sensors."""
    ts = T0 + seq * 1_000_000_000 + np.arange(n, dtype=np.int64) * 1000
    segs = [
        SensorSegment("temp", ts, np.linspace(20, 30, n)),
        SensorSegment("press", ts + 1, np.linspace(900, 1000, n)),
    ]
    return s.seal(seq, segs, created_ns=time.time_ns())[0]


def post(url: str, data: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST a frame; (status, JSON body, headers)."""
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/octet-stream")
    ctx: ssl.SSLContext = LOOPBACK_TLS
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = {"text": raw.decode(errors="replace")}
        return exc.code, body, dict(exc.headers)


def stored(dep: Deployment) -> dict[tuple[str, int], int]:
    """(gateway, seq) → readings in party0's share store."""
    path = dep.state_dir("party0") / "shares.db"
    if not path.exists():
        return {}
    conn = sqlite3.connect(path, timeout=10)
    try:
        rows = conn.execute("SELECT gateway, seq, count FROM batches").fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        conn.close()
    return {(str(g), int(s)): int(c) for g, s, c in rows}


def wait_for(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``pred`` until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def health(dep: Deployment, name: str) -> dict[str, Any]:
    """``name``'s ``/healthz`` (it must answer 200)."""
    status, body = http_json(dep.url(name) + "/healthz", timeout=3)
    assert status == 200
    return dict(body)


def start_frontends(dep: Deployment, fes: list[str], *, on_log: bool = True) -> None:
    """Start the frontends ``fes`` and wait until each is healthy (and, with ``on_log``,
    connected to its party's log)."""
    for fe in fes:
        dep.start(fe)
    for fe in fes:
        dep.wait_healthy(fe)
    if on_log:
        wait_for(
            lambda: all(http_json(dep.url(fe) + "/healthz")[1]["log_connected"] for fe in fes),
            30,
            "frontends on their party's log",
        )


def own_state_dir(dep: Deployment, fe: str) -> Path:
    """Give frontend ``fe`` a state dir of its own holding only the party's sealed keys."""
    state = dep.root / f"{fe}-state"
    state.mkdir()
    shutil.copy(dep.state_dir("party0") / "sealed_keys.bin", state / "sealed_keys.bin")
    path = dep.root / f"{fe}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["state_dir"] = state.name
    path.write_text(yaml.safe_dump(doc))
    return state


def start_own_frontends(dep: Deployment, ready: Callable[[str], bool], what: str) -> list[str]:
    """Start party0's worker and two frontends, each with a state dir of its own (as on
    two hosts); wait until each is healthy and ``ready(fe)`` (``what`` names that)."""
    dep.start("party0")
    dep.wait_healthy("party0")
    fes = [dep.add_frontend("party0") for _ in range(2)]
    for fe in fes:
        own_state_dir(dep, fe)
        dep.start(fe)
    for fe in fes:
        dep.wait_healthy(fe)
        wait_for(functools.partial(ready, fe), what=f"{fe} {what}")
    return fes


def post_until_acked(url: str, data: bytes, timeout: float = 60.0) -> dict[str, Any]:
    """POST until 200 (503 + Retry-After is waited out, 0.2 s at most here); the body."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, headers = post(url, data)
        if status == 200:
            return body
        assert status == 503, (status, body)
        assert int(headers["Retry-After"]) >= 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} kept answering 503")
        time.sleep(0.2)


def upload_through(
    dep: Deployment, fes: list[str], gws: dict[str, TestGateway], scn: Scenario, secs: range
) -> set[str]:
    """Each second of ``secs``: every gateway's frames to the frontends, then progress notices.

    A second already sealed is sent again as the same frames (a retry); the
    statuses the frontends answered.
    """
    statuses = set()
    for sec in secs:
        for g, gw in gws.items():
            frames = gw.frames.get(sec) or gw.seal(sec, scn.batch(g, sec))
            for fe, f in zip(fes, frames, strict=True):
                status, body = http_json(f"{dep.url(fe)}/v1/batches", data=f)
                assert status == 200, body
                statuses.add(body["status"])
        now = time.time_ns()
        for g in gws:
            for i, fe in enumerate(fes):
                end = cloud_scenario.T0 + (sec + 1) * SECOND
                notice = Progress(g, f"party{i}", min(end, now), now)
                frame = seal_progress(notice, dep.signing_key(g))
                assert http_json(f"{dep.url(fe)}/v1/progress", data=frame)[0] == 200
    return statuses
