"""Zero-touch enrolment end to end: a gateway no config names, real processes, swtpm.

The parties' configs name no gateway. The real agent (``tecc-gateway launch``,
measured into PCR 14 of a swtpm manufactured with an EK certificate) enrols by
TPM attestation with each party, each deciding under its own policy: party0
enrols it automatically (its PCR 14 holds the launch measurement party0
lists), party1 wants its operator's approval. Then, without restarting any
service: party0 accepts the readings while party1 refuses them as pending;
``tecc-cluster admin approve`` on party1 makes it accept the spooled batches
and the output releases windows holding every reading; the gateway re-quotes
every second; ``tecc-cluster admin revoke`` on party1 refuses its batches and
notices from then on (counted); extending PCR 14 suspends it at party0 at the
next re-quote and its data there is refused and counted.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.devstack.deployment import Deployment, http_json
from gateway.tpm import Tpm
from tests.cloud.scenario import POLICY
from tests.cloud.services import TestGateway, metric, segment
from tests.enrol.stack import TOPIC, admin, enrolling_stack, refused, state
from tests.gateway.harness import health, wait_for
from tests.gateway.publisher import publish

pytestmark = [pytest.mark.tpm, pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]


def _count(dep: Deployment, party: str, sample: str) -> float:
    return metric(dep, party, sample)


def _released(dep: Deployment, readings: int) -> bool:
    status, windows = http_json(dep.url("output") + "/api/v1/windows?gateway=gw-test&since=0")
    return status == 200 and sum(w["count"] for w in windows) == readings


def _quotes(dep: Deployment, party: str, at_least: int) -> bool:
    return _count(dep, party, 'tecc_enrolment_outcomes_total{outcome="quoted"}') >= at_least


async def _party0_accepts_party1_refuses(
    dep: Deployment, broker_port: int, value: bytes, n: int, total: int, why: str, held: int
) -> None:
    """Publish ``n`` readings ``value``: party0 accepts them (``total`` readings in all),
    party1 refuses the batches of the gateway it holds ``why`` (it keeps ``held``)."""
    await asyncio.sleep(1.0)  # the MQTT session is up
    await asyncio.to_thread(publish, broker_port, [(TOPIC, value)] * n)
    await wait_for(
        lambda: _count(dep, "party0", "tecc_ingest_readings_total") == total,
        60,
        f"party0 accepts the {n} readings ({total} in all)",
    )
    await wait_for(
        lambda: refused(dep, "party1", why) > 0, 60, f"party1 refuses the {why} gateway's batches"
    )
    assert _count(dep, "party1", "tecc_ingest_readings_total") == held


async def test_unnamed_gateway_enrols_is_approved_revoked_and_suspended(tmp_path: Path) -> None:
    with enrolling_stack(tmp_path, policies={"party1": {"approval": "operator"}}) as (stack, _):
        dep, doc, sw = stack.dep, stack.gateway_doc, stack.tpm
        broker_port = stack.broker_port
        await wait_for(lambda: state(dep, "party0") == "enrolled", 30, "party0 enrols")
        await wait_for(lambda: state(dep, "party1") == "pending", 30, "party1 parks it")
        gw_health = await health(doc["http"]["port"])
        assert gw_health["enrolment"]["0"]["status"] == "enrolled", gw_health
        assert gw_health["enrolment"]["1"]["status"] == "pending", gw_health
        # party0 accepts every reading of a gateway no config names; party1 parks it
        await _party0_accepts_party1_refuses(dep, broker_port, b"21.5", 100, 100, "pending", 0)

        assert admin(dep, "party1", "approve", "gw-test")["state"] == "enrolled"
        await wait_for(
            lambda: _count(dep, "party1", "tecc_ingest_readings_total") == 100,
            90,
            "party1 accepts the spooled batches after approval, without a restart",
        )
        for party in ("party0", "party1"):
            await wait_for(functools.partial(_quotes, dep, party, 2), 30, f"{party} gets re-quotes")
        await wait_for(
            functools.partial(_released, dep, 100),
            90,
            "the output to release windows holding all 100 readings",
        )

        assert admin(dep, "party1", "revoke", "gw-test")["state"] == "revoked"
        # party0 (its own trust domain) still accepts
        await _party0_accepts_party1_refuses(dep, broker_port, b"22.5", 50, 150, "revoked", 100)

        with Tpm(sw.tcti) as tpm:  # other software "launched" after enrolment
            tpm.extend_pcr(14, hashlib.sha256(b"other software").digest())
        await wait_for(
            lambda: state(dep, "party0") == "suspended", 30, "party0 suspends at the re-quote"
        )
        await asyncio.to_thread(publish, broker_port, [(TOPIC, b"23.5")] * 50)
        await wait_for(
            lambda: refused(dep, "party0", "suspended") > 0,
            60,
            "party0 refuses the suspended gateway's batches",
        )
        assert _count(dep, "party0", "tecc_ingest_readings_total") == 150
        assert state(dep, "party1") == "revoked"


async def test_revoking_a_config_gateway_refuses_its_batches_live(tmp_path: Path) -> None:
    """A gateway named in both configs, revoked at party0 only: its next batch is refused
    there (403 ``revoked``, counted) and still accepted by party1; no restart."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "cloud").mkdir()
    dep = Deployment(tmp_path / "cloud", POLICY, {"gw-static": key})
    try:
        await asyncio.to_thread(dep.start_all)
        gw = await asyncio.to_thread(TestGateway, dep, "gw-static")
        now = time.time_ns()
        seg = [segment("temp1", np.array([now, now + 1]), np.array([20.0, 21.0]))]
        first = await asyncio.to_thread(gw.upload, gw.seal(1, seg))
        admin(dep, "party0", "revoke", "gw-static", "--reason", "decommissioned")
        await asyncio.sleep(1.0)  # the party re-reads enrolment.db every 0.5 s
        second = await asyncio.to_thread(gw.upload, gw.seal(2, seg))
        refused = _count(dep, "party0", 'tecc_ingest_rejected_total{reason="revoked"}')
    finally:
        await asyncio.to_thread(dep.stop_all)
    assert [st for st, _ in first] == [200, 200]
    assert second[0][0] == 403
    assert second[0][1]["reason"] == "revoked"
    assert "decommissioned" in second[0][1]["error"]
    assert second[1][0] == 200  # party1 is its own trust domain
    assert refused == 1
