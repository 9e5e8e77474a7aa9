"""Enrolment is party-wide in the JetStream layout: real nats-server, worker and frontend processes.

Two ingest frontends with state dirs of their own (as on two hosts: each has
the party's sealed keys and nothing else) and a shard worker share one party
JetStream. A TPM challenge issued by frontend A is finished at frontend B
(and its replay refused at A); a re-quote over changed PCRs at B suspends
the gateway at A; a revocation written by the operator tool
from A's host is enforced by B without a restart, its batches and notices
refused and counted; an enrolment.db left from the all-in-one layout is
imported once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.jetstream.server import start_node
from cloud_tecc.party.registry import Registry
from demo.devstack.deployment import LOOPBACK_TLS, http_json
from gateway.config_yaml import load_config
from gateway.enrol import TpmEvidence
from gateway.keys import GatewayKeys
from gateway.tpm import Tpm
from tecc_contract.progress import Progress, seal_progress
from tecc_contract.tpm_evidence import ENROL_TAG, REQUOTE_TAG
from tests.cloud.services import metric
from tests.enrol.stack import admin
from tests.enrol.tpms import ca_bundle, manufactured_swtpm
from tests.gateway.harness import ClusterSpec, PlatformSpec, write_config

from .logstack import GW, deployment, frame, post, sealer, start_own_frontends, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.tpm]


def _post_json(url: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10, context=LOOPBACK_TLS) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def _state_is(url: str, gateway: str, state: str) -> bool:
    return bool(http_json(url + "/healthz")[1]["enrolment"].get(gateway) == state)


def _ready(url: str) -> bool:
    status, body = http_json(url + "/healthz")
    return status == 200 and bool(body.get("log_connected"))


def test_enrolment_and_revocation_are_party_wide(tmp_path: Path) -> None:
    with (
        start_node(tmp_path / "nats") as nd,
        manufactured_swtpm(tmp_path / "tpm", tmp_path / "ca") as sw,
    ):
        bundle = tmp_path / "vendor.pem"
        bundle.write_bytes(ca_bundle(tmp_path / "ca"))
        (tmp_path / "cloud").mkdir()
        dep = deployment(
            tmp_path / "cloud",
            {"servers": nd.servers},  # the credential in the URLs
            enrolment={"ek_ca_files": [str(bundle)]},  # no values: the operator
        )
        try:
            dep.write_configs()
            # an all-in-one party's enrolment.db, left in the worker's state dir
            legacy = Registry(dep.state_dir("party0"))
            asyncio.run(legacy.revoke("gw-legacy", "stolen before the move", time.time_ns()))
            legacy.close()
            fes = start_own_frontends(dep, lambda fe: _ready(dep.url(fe)), "on the log")
            a, b = (dep.url(fe) for fe in fes)
            imported = admin(dep, fes[1], "list")["gateways"]
            assert [(g["gateway_id"], g["state"]) for g in imported] == [("gw-legacy", "revoked")]
            assert (dep.state_dir("party0") / "enrolment.db.imported").exists()

            # -- a challenge issued at A is finished at B; its replay refused at A
            (tmp_path / "gw").mkdir()
            clusters = [ClusterSpec(i, f"http://127.0.0.1:{i + 1}", f"party{i}") for i in (0, 1)]
            gcfg = write_config(
                tmp_path / "gw", clusters=clusters, platform=PlatformSpec("p", "00" * 32),
                tcti=sw.tcti,
            )  # fmt: skip
            keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
            evidence = TpmEvidence(load_config(gcfg), keys, lambda: Tpm(sw.tcti))
            status, challenge = _post_json(f"{a}/v1/enrol/challenge", evidence.request())
            assert status == 200, challenge
            answer = evidence.answer(challenge, ENROL_TAG)
            status, done = _post_json(f"{b}/v1/enrol/finish", answer)
            assert (status, done["status"]) == (200, "pending"), done
            status, again = _post_json(f"{a}/v1/enrol/finish", answer)
            assert (status, again["reason"]) == (403, "nonce"), again
            wait_for(lambda: http_json(a + "/healthz")[1]["enrolment"].get("gw-test") == "pending")
            approved = admin(dep, fes[0], "approve", "gw-test")
            assert approved["state"] == "enrolled"
            # -- a re-quote over changed PCRs at B suspends the gateway at A too
            wait_for(functools.partial(_state_is, a, "gw-test", "enrolled"))
            with Tpm(sw.tcti) as tpm:
                tpm.extend_pcr(14, hashlib.sha256(b"update").digest())
            status, ch = _post_json(f"{a}/v1/attest/challenge", {"gateway_id": "gw-test"})
            assert status == 200, ch
            status, quoted = _post_json(f"{b}/v1/attest/quote", evidence.answer(ch, REQUOTE_TAG))
            assert (status, quoted["status"]) == (200, "suspended"), quoted
            wait_for(functools.partial(_state_is, a, "gw-test", "suspended"))

            # -- a revocation written from A's host is enforced by B, live
            s = sealer(dep, b)
            status, body, _ = post(f"{b}/v1/batches", frame(s, 1))
            assert (status, body["status"]) == (200, "accepted")
            before = metric(dep, fes[1], 'tecc_ingest_rejected_total{reason="revoked"}')
            t0 = time.monotonic()
            admin(dep, fes[0], "revoke", GW, "--reason", "stolen")
            t1 = time.monotonic()  # the CLI wrote the KV and exited
            seq = 2
            while True:
                status, body, _ = post(f"{b}/v1/batches", frame(s, seq))
                if status != 200:
                    break
                seq += 1
                assert time.monotonic() - t0 < 10, "B still accepts the revoked gateway"
            took, since_cli = time.monotonic() - t0, time.monotonic() - t1
            assert (status, body["reason"]) == (403, "revoked")
            print(
                f"revoke (CLI on A's host) → refused at B: {took * 1000:.0f} ms from the "
                f"command's start, {since_cli * 1000:.0f} ms after it exited ({seq - 2} "
                "batches accepted in between)"
            )
            after = metric(dep, fes[1], 'tecc_ingest_rejected_total{reason="revoked"}')
            assert after == before + 1
            now = time.time_ns()
            notice = seal_progress(Progress(GW, "party0", now, now), dep.signing_key(GW))
            status, body = http_json(f"{b}/v1/progress", data=notice)
            assert (status, body["reason"]) == (403, "revoked")
            assert metric(dep, fes[1], 'tecc_progress_rejected_total{reason="revoked"}') == 1
            for url in (a, b):  # both frontends and the worker see it, none restarted
                wait_for(functools.partial(_state_is, url, GW, "revoked"))
            assert http_json(dep.url("party0") + "/healthz")[1]["enrolment"][GW] == "revoked"
        finally:
            dep.stop_all()
