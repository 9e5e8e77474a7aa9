"""Who may enrol under a gateway id, end to end (real processes, swtpm, mosquitto).

Another genuine TPM of the same vendor, running the approved software, cannot
take over an enrolled gateway's id: its claim is refused (``conflict``,
counted) at every party and the real gateway keeps delivering. The same TPM
rotating its identity key (``tecc-gateway rotate-identity``) is enrolled with
the new key at every party on its own evidence; batches signed with the old
key are refused and counted from then on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.devstack.deployment import Deployment, http_json
from gateway.config_yaml import load_config
from gateway.enrol import TpmEvidence
from gateway.keys import IDENTITY_FILE, SPOOL_KEY_FILE, GatewayKeys, load_keys
from gateway.launch import measure
from gateway.tpm import Tpm
from tecc_contract.tpm_evidence import ENROL_TAG
from tests.cloud.services import TestGateway, metric, segment
from tests.enrol.stack import GATEWAY, TOPIC, admin, enrolling_stack, state
from tests.enrol.tpms import manufactured_swtpm
from tests.gateway.harness import (
    ClusterSpec,
    PlatformSpec,
    cli,
    spawn,
    terminate,
    wait_for,
    write_config,
)
from tests.gateway.publisher import publish
from tests.gateway.services import Swtpm

pytestmark = [pytest.mark.tpm, pytest.mark.mqtt, pytest.mark.processes, pytest.mark.slow]
PARTIES = ("party0", "party1")
#: the claim's answers are computed before the real gateway enrols and posted after
LONG_NONCES = {p: {"nonce_ttl_s": 600.0} for p in PARTIES}


def _post(dep: Deployment, party: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return http_json(dep.url(party) + path, data=json.dumps(body).encode())


def _record(dep: Deployment, party: str) -> dict[str, Any]:
    (rec,) = [g for g in admin(dep, party, "list")["gateways"] if g["gateway_id"] == GATEWAY]
    return dict(rec)


def _accepted(dep: Deployment, party: str) -> float:
    return metric(dep, party, "tecc_ingest_readings_total")


async def _deliver(dep: Deployment, broker_port: int, n: int, total: int) -> None:
    """Publish ``n`` readings; both parties accept them (``total`` in all)."""
    await asyncio.sleep(1.0)  # the agent's MQTT session is up
    await asyncio.to_thread(publish, broker_port, [(TOPIC, b"21.5")] * n)
    for party in PARTIES:
        await wait_for(
            lambda p=party: _accepted(dep, p) == total, 60, f"{party} accepts {total} readings"
        )


def _evidence(where: Path, dep: Deployment, sw: Swtpm) -> TpmEvidence:
    """A gateway ``gw-test`` with its own identity key and state on TPM ``sw``."""
    where.mkdir()
    clusters = [ClusterSpec(i, dep.url(f"party{i}"), f"party{i}") for i in (0, 1)]
    cfg = write_config(
        where, clusters=clusters, platform=PlatformSpec("p", "00" * 32), tcti=sw.tcti
    )
    keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
    return TpmEvidence(load_config(cfg), keys, lambda: Tpm(sw.tcti))


async def test_another_genuine_tpm_cannot_take_over_an_enrolled_gateway_id(
    tmp_path: Path,
) -> None:
    """TPM B (same vendor CA, approved PCRs, its own identity key) asks both parties for a
    challenge under ``gw-test`` while the id is free; the real gateway (TPM A) enrols and
    delivers; B's finish is refused at both, A's records stay, A's data is still accepted.

    Fails on the code before this change: B's finish was answered ``enrolled``, the
    records held B's identity key and A's batches were refused.
    """
    with manufactured_swtpm(tmp_path / "tpm-b", tmp_path / "ca") as sw_b:  # A's vendor
        claims: dict[str, dict[str, Any]] = {}

        def challenge_as_b(dep: Deployment) -> None:
            ev_b = _evidence(tmp_path / "gw-b", dep, sw_b)
            with Tpm(sw_b.tcti) as tpm:  # B "launched" the approved software too
                assert measure(tpm, 14, load_config(tmp_path / "gw" / "gateway.yaml")) == "extended"
            for party in PARTIES:
                status, ch = _post(dep, party, "/v1/enrol/challenge", ev_b.request())
                assert status == 200, ch
                claims[party] = ev_b.answer(ch, ENROL_TAG)

        with enrolling_stack(tmp_path, policies=LONG_NONCES, before_agent=challenge_as_b) as (
            stack,
            _,
        ):
            dep = stack.dep
            for party in PARTIES:
                await wait_for(lambda p=party: state(dep, p) == "enrolled", 30, f"{party} enrols")
            await _deliver(dep, stack.broker_port, 100, 100)
            before = {p: _record(dep, p) for p in PARTIES}
            for party in PARTIES:
                status, doc = _post(dep, party, "/v1/enrol/finish", claims[party])
                assert (status, doc["reason"]) == (403, "conflict"), doc
                assert "enrolled with another TPM (EK fingerprint" in doc["error"]
                counted = 'tecc_enrolment_refused_total{reason="conflict"}'
                assert metric(dep, party, counted) == 1
                after = _record(dep, party)
                for field in ("state", "identity_key", "ek_fingerprint", "golden", "enrolled_ns"):
                    assert after[field] == before[party][field], field
            await _deliver(dep, stack.broker_port, 50, 150)


async def test_the_same_tpm_rotates_its_identity_key_at_every_party(tmp_path: Path) -> None:
    """Drain, stop the agent, ``tecc-gateway launch --config F rotate-identity``, start it:
    every party holds the new key (its own verification), the agent's data is accepted,
    a batch signed with the old key is refused and counted."""
    with enrolling_stack(tmp_path, policies={"party1": {"approval": "operator"}}) as (stack, _):
        dep, cfg = stack.dep, stack.config
        await wait_for(lambda: state(dep, "party0") == "enrolled", 30, "party0 enrols")
        await wait_for(lambda: state(dep, "party1") == "pending", 30, "party1 parks it")
        assert admin(dep, "party1", "approve", GATEWAY)["state"] == "enrolled"
        await _deliver(dep, stack.broker_port, 100, 100)
        state_dir = Path(stack.gateway_doc["state_dir"])
        (tmp_path / "old").mkdir()
        for name in (IDENTITY_FILE, SPOOL_KEY_FILE):
            shutil.copy(state_dir / name, tmp_path / "old" / name)
        assert terminate(stack.agent) == 0
        out = cli("launch", "--config", str(cfg), "rotate-identity")
        assert out.returncode == 0, out.stderr
        rotated = json.loads(out.stdout)
        assert rotated["identity_public_key"] != rotated["previous_identity_public_key"]
        for i, party in enumerate(PARTIES):
            answer = rotated["enrolment"][str(i)]
            assert (answer["status"], answer["reason"]) == ("enrolled", "identity key rotated")
            assert _record(dep, party)["identity_key"] == rotated["identity_public_key"]
        stack.agent = spawn(cfg, tmp_path / "gw" / "agent.log")
        await _deliver(dep, stack.broker_port, 50, 150)

        with Tpm(stack.tpm.tcti) as tpm:
            old = load_keys(tpm, tmp_path / "old")
        assert old.public_raw.hex() == rotated["previous_identity_public_key"]
        gw = await asyncio.to_thread(TestGateway, dep, GATEWAY, signing_key=old.identity)
        now = time.time_ns()
        seg = [segment("temp1", np.array([now, now + 1]), np.array([20.0, 21.0]))]
        answers = await asyncio.to_thread(gw.upload, gw.seal(1, seg))
        assert [status for status, _ in answers] == [403, 403], answers
        for party in PARTIES:
            assert metric(dep, party, 'tecc_ingest_rejected_total{reason="signature"}') >= 1
        assert [_accepted(dep, p) for p in PARTIES] == [150, 150]
