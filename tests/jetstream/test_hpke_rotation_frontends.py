"""HPKE key rotation in the JetStream layout: a worker and two frontend processes, real NATS.

The frontends (state dirs of their own, each holding only a copy of the
party's sealed keys) share the party's key ring in its KV and rotate it every
``hpke_rotation_s``. Shown: both use the same ring version and their quotes
name the same key; after a rotation a batch sealed to the old key opens at
either frontend during ``hpke_overlap_s`` and is refused after it (403
``decrypt``, counted at the frontend that refused it); a quote after the
rotation names the new key with ``hpke_prev`` = the old one (what a gateway
follows); every version was written by exactly one frontend; the accepted
batches reach the shard worker's store. Fails on the code before this
change: ``hpke_rotation_s`` with ``jetstream:`` was refused at load.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_tecc.jetstream.server import start_node
from demo.devstack.deployment import Deployment, http_json
from tecc_contract.attestation import Quote, hpke_key_digest
from tests.cloud.services import metric

from .logstack import deployment, frame, post, sealer, start_own_frontends, stored, wait_for

pytestmark = pytest.mark.processes
ROTATION_S, OVERLAP_S = 8.0, 4.0


def _hpke(dep: Deployment, fe: str) -> dict[str, Any]:
    status, body = http_json(dep.url(fe) + "/healthz", timeout=3)
    return dict(body.get("hpke") or {}) if status == 200 else {}


def _ready(dep: Deployment, fe: str) -> bool:
    status, body = http_json(dep.url(fe) + "/healthz", timeout=3)
    return status == 200 and bool(body.get("log_connected")) and bool(body.get("hpke"))


def _quote(dep: Deployment, fe: str) -> Quote:
    status, body = http_json(f"{dep.url(fe)}/attestation?nonce={os.urandom(32).hex()}")
    assert status == 200, body
    return Quote.from_json(body)


def _versions(dep: Deployment, fes: list[str]) -> list[int | None]:
    return [_hpke(dep, fe).get("version") for fe in fes]


def test_frontends_share_one_rotating_ring(tmp_path: Path) -> None:
    with start_node(tmp_path / "nats") as nd:
        (tmp_path / "cloud").mkdir()
        dep = deployment(
            tmp_path / "cloud",
            {"servers": nd.servers},
            hpke_rotation_s=ROTATION_S,
            hpke_overlap_s=OVERLAP_S,
        )
        try:
            dep.write_configs()
            fes = start_own_frontends(dep, functools.partial(_ready, dep), "on the log and ring")
            a, b = fes
            # -- attest at A on a settled version (not just before a rotation)
            while True:
                v = _versions(dep, fes)
                ring = _hpke(dep, a)
                old_quote = _quote(dep, a)
                if v[0] == v[1] and ring["current"] == hpke_key_digest(old_quote.keys["hpke"]):
                    left = ring["since_ns"] + ROTATION_S * 1e9 - time.time_ns()
                    if left > 2e9:
                        break
                time.sleep(0.2)
            version = int(ring["version"])
            assert _quote(dep, b).keys["hpke"] == old_quote.keys["hpke"]  # one key per party
            old = sealer(dep, dep.url(a))
            status, body, _ = post(f"{dep.url(b)}/v1/batches", frame(old, 1))
            assert (status, body["status"]) == (200, "accepted"), body
            # -- the ring rotates; both frontends take the new version
            wait_for(
                lambda: _versions(dep, fes) == [version + 1] * 2, ROTATION_S + 10, "a rotation"
            )
            adopted = time.monotonic()
            for seq, fe in ((2, a), (3, b)):  # old key, during the overlap: opens at either
                status, body, _ = post(f"{dep.url(fe)}/v1/batches", frame(old, seq))
                assert (status, body["status"]) == (200, "accepted"), (fe, body)
            in_overlap = time.monotonic() - adopted
            assert all(_hpke(dep, fe)["overlap"] for fe in fes)
            new_quote = _quote(dep, b)
            assert new_quote.keys["hpke"] != old_quote.keys["hpke"]
            assert new_quote.claims["hpke_prev"] == hpke_key_digest(old_quote.keys["hpke"])
            assert _quote(dep, a).keys["hpke"] == new_quote.keys["hpke"]
            new = sealer(dep, dep.url(b))
            status, body, _ = post(f"{dep.url(a)}/v1/batches", frame(new, 4))
            assert (status, body["status"]) == (200, "accepted"), body
            # -- after the overlap the old key is retired at both
            wait_for(
                lambda: not any(_hpke(dep, fe)["overlap"] for fe in fes), OVERLAP_S + 5, "retire"
            )
            time.sleep(0.5)  # the frontends rebuild their opener at the overlap's end
            for seq, fe in ((5, a), (6, b)):
                status, body, _ = post(f"{dep.url(fe)}/v1/batches", frame(old, seq))
                assert (status, body["reason"]) == (403, "decrypt"), (fe, body)
                assert "was retired at" in body["error"]
                assert metric(dep, fe, 'tecc_ingest_rejected_total{reason="decrypt"}') == 1
            status, body, _ = post(f"{dep.url(b)}/v1/batches", frame(new, 7))
            assert (status, body["status"]) == (200, "accepted"), body
            # -- every version written by exactly one frontend
            final = _versions(dep, fes)
            rotations = [metric(dep, fe, "tecc_hpke_rotations_total") for fe in fes]
            wait_for(lambda: {1, 2, 3, 4, 7} <= {s for _, s in stored(dep)}, 30, "stored")
        finally:
            dep.stop_all()
    print(
        f"ring versions {final}, rotations written per frontend {rotations}; old-key batches "
        f"accepted {in_overlap * 1000:.0f} ms into the {OVERLAP_S:g} s overlap"
    )
    assert final[0] == final[1]
    assert final[0] is not None
    assert sum(rotations) == final[0] - 1
