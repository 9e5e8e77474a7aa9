"""A real party process refuses bad TPM evidence, each with a clear reason (swtpm + HTTP).

The gateway side is :class:`gateway.enrol.TpmEvidence` against a manufactured
swtpm; the verifier is a real ``python -m cloud_tecc party`` with its own
enrolment policy. Refused: an EK certificate from an unknown CA, a replayed and
a stale nonce, a quote over PCR values the policy does not list, an AK that is
not in the EK's TPM. A genuine gateway is enrolled and the operator's
``tecc-cluster admin revoke`` takes effect on the running party.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from demo.devstack.deployment import LOOPBACK_TLS, Deployment, http_json
from gateway.config_yaml import load_config
from gateway.enrol import TpmEvidence
from gateway.keys import GatewayKeys
from gateway.tpm import Tpm
from tecc_contract.tpm_evidence import ENROL_TAG, REQUOTE_TAG
from tests.cloud.scenario import POLICY
from tests.enrol.stack import admin
from tests.enrol.tpms import ca_bundle, manufactured_swtpm
from tests.gateway.harness import ClusterSpec, PlatformSpec, cli, write_config
from tests.gateway.services import Swtpm

pytestmark = [pytest.mark.tpm, pytest.mark.processes]


@dataclass
class Rig:
    dep: Deployment
    good: Swtpm
    foreign: Swtpm
    tmp: Path

    def evidence(self, sw: Swtpm, name: str) -> TpmEvidence:
        """A gateway ``name`` with fresh identity keys on TPM ``sw``."""
        plat = PlatformSpec("p", "00" * 32)
        (self.tmp / name).mkdir(exist_ok=True)
        cfg_path = write_config(
            self.tmp / name,
            clusters=[ClusterSpec(i, self.dep.url(f"party{i}"), f"party{i}") for i in (0, 1)],
            platform=plat,
            tcti=sw.tcti,
        )
        cfg = load_config(cfg_path)
        keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
        return TpmEvidence(cfg, keys, lambda: Tpm(sw.tcti))

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST JSON to party0."""
        req = urllib.request.Request(
            self.dep.url("party0") + path, data=json.dumps(body).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=10, context=LOOPBACK_TLS) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with (
        manufactured_swtpm(tmp_path / "tpm-a", tmp_path / "ca-a") as good,
        manufactured_swtpm(tmp_path / "tpm-b", tmp_path / "ca-b") as foreign,
    ):
        bundle = tmp_path / "vendor-a.pem"
        bundle.write_bytes(ca_bundle(tmp_path / "ca-a"))
        enrolment = {
            "ek_ca_files": [str(bundle)],
            "pcrs": [14],
            "pcr_values": {14: [bytes(32).hex()]},  # the reset value: nothing launched yet
            "nonce_ttl_s": 1.0,
            "requote_s": 2.0,
            "grace_s": 2.0,
        }
        (tmp_path / "cloud").mkdir()
        dep = Deployment(tmp_path / "cloud", POLICY, {}, party_extra={"enrolment": enrolment})
        dep.start("party0")
        try:
            dep.wait_healthy("party0")
            yield Rig(dep, good, foreign, tmp_path)
        finally:
            dep.stop_all()


def _enrol(rig: Rig, ev: TpmEvidence) -> tuple[dict[str, Any], tuple[int, dict[str, Any]]]:
    status, challenge = rig.post("/v1/enrol/challenge", ev.request())
    assert status == 200, challenge
    answer = ev.answer(challenge, ENROL_TAG)
    return answer, rig.post("/v1/enrol/finish", answer)


def test_genuine_gateway_enrols_and_a_replay_of_its_answer_is_refused(rig: Rig) -> None:
    answer, (status, doc) = _enrol(rig, rig.evidence(rig.good, "gw"))
    assert (status, doc["status"]) == (200, "enrolled"), doc
    again = rig.post("/v1/enrol/finish", answer)
    assert again[0] == 403
    assert again[1]["reason"] == "nonce"
    assert "already used" in again[1]["error"]
    listed = admin(rig.dep, "party0", "list")["gateways"]
    assert [(g["gateway_id"], g["state"]) for g in listed] == [("gw-test", "enrolled")]


def test_stale_nonce_is_refused(rig: Rig) -> None:
    ev = rig.evidence(rig.good, "gw")
    status, challenge = rig.post("/v1/enrol/challenge", ev.request())
    assert status == 200
    answer = ev.answer(challenge, ENROL_TAG)
    time.sleep(1.3)  # enrolment.nonce_ttl_s is 1 s
    status, doc = rig.post("/v1/enrol/finish", answer)
    assert (status, doc["reason"]) == (403, "nonce"), doc


def test_ek_certificate_from_an_unknown_ca_is_refused(rig: Rig) -> None:
    status, doc = rig.post("/v1/enrol/challenge", rig.evidence(rig.foreign, "gw").request())
    assert (status, doc["reason"]) == (403, "ek_ca"), doc
    assert "does not chain to any manufacturer CA" in doc["error"]


def test_quote_over_changed_pcrs_is_refused(rig: Rig) -> None:
    with Tpm(rig.good.tcti) as tpm:
        tpm.extend_pcr(14, hashlib.sha256(b"some other software").digest())
    _, (status, doc) = _enrol(rig, rig.evidence(rig.good, "gw"))
    assert (status, doc["reason"]) == (403, "pcr"), doc
    assert "PCR(s) [14]" in doc["error"]


def test_ak_not_bound_to_the_ek_is_refused(rig: Rig) -> None:
    """TPM A's certified EK with TPM B's AK: B cannot activate, whatever it answers is refused."""
    a, b = rig.evidence(rig.good, "a"), rig.evidence(rig.foreign, "b")
    request = {**a.request(), "ak_public": b.request()["ak_public"]}
    status, challenge = rig.post("/v1/enrol/challenge", request)
    assert status == 200, challenge
    quoted = b.answer({"nonce": challenge["nonce"], "pcrs": challenge["pcrs"]}, ENROL_TAG)
    forged = {**quoted, "gateway_id": "gw-test", "activated": os.urandom(32).hex()}
    status, doc = rig.post("/v1/enrol/finish", forged)
    assert (status, doc["reason"]) == (403, "ak_not_bound"), doc
    assert base64.b64decode(challenge["credential"])  # a real credential was issued


def test_revocation_is_live(rig: Rig) -> None:
    ev = rig.evidence(rig.good, "gw")
    _, (status, doc) = _enrol(rig, ev)
    assert doc["status"] == "enrolled"
    assert admin(rig.dep, "party0", "revoke", "gw-test", "--reason", "stolen")["state"] == "revoked"
    status, challenge = rig.post("/v1/attest/challenge", {"gateway_id": "gw-test"})
    assert status == 200  # a nonce for anyone: the quote decides
    status, doc = rig.post("/v1/attest/quote", ev.answer(challenge, REQUOTE_TAG))
    assert (status, doc["reason"]) == (403, "revoked"), doc
    status, challenge = rig.post("/v1/attest/challenge", {"gateway_id": "nobody"})
    forged = {**ev.answer(challenge, REQUOTE_TAG), "gateway_id": "nobody"}
    status, doc = rig.post("/v1/attest/quote", forged)
    assert (status, doc["reason"]) == (403, "quote_signature"), doc
    status, challenge = rig.post("/v1/enrol/challenge", ev.request())
    assert (status, challenge["reason"]) == (403, "revoked")


def test_a_silent_gateway_is_suspended(rig: Rig) -> None:
    """No re-quote within requote_s + grace_s (4 s here): the running party suspends it."""
    _, (_, doc) = _enrol(rig, rig.evidence(rig.good, "gw"))
    assert doc["status"] == "enrolled"
    deadline = time.monotonic() + 15
    state = None
    while time.monotonic() < deadline and state != "suspended":
        time.sleep(0.2)
        state = http_json(rig.dep.url("party0") + "/healthz")[1]["enrolment"]["gw-test"]
    assert state == "suspended"
    (rec,) = admin(rig.dep, "party0", "list", "--state", "suspended")["gateways"]
    assert rec["reason"].startswith("silent")


def test_the_enrol_command_reports_each_clusters_answer(rig: Rig) -> None:
    """`tecc-gateway launch --config F enrol`: party0 refuses (its policy lists the reset
    PCR 14, the launch measured the agent into it), party1 is not running; exit 4."""
    plat = PlatformSpec("p", "00" * 32)
    (rig.tmp / "cli").mkdir()
    clusters = [ClusterSpec(i, rig.dep.url(f"party{i}"), f"party{i}") for i in (0, 1)]
    cfg = write_config(rig.tmp / "cli", clusters=clusters, platform=plat, tcti=rig.good.tcti)
    assert cli("provision", "--config", str(cfg)).returncode == 0
    out = cli("launch", "--config", str(cfg), "enrol")
    assert out.returncode == 4, out.stderr
    answers = json.loads(out.stdout)
    assert answers["0"]["reason"] == "pcr"
    assert "enrolment.pcr_values does not list" in answers["0"]["error"]
    assert answers["1"]["status"] == "unreachable"
