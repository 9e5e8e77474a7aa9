"""A cluster whose analytics policy was edited no longer attests, and gets nothing.

Party 1 runs the same build with ``min_count`` lowered to 1 (a policy that
would release single readings). Its measurement changes, so: gateways refuse
to seal to it, party 0 refuses to open the MPC session with it, and the
output service refuses result shares it signs with its own (genuine, sealed)
enclave key, while the same message from honest party 0 gets past
attestation. Complements ``tests/cloud/test_cloud_processes.py::
test_edited_policy_fails_attestation_everywhere`` (which also shows that an
edited policy cannot unseal the old keys).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.service.channel import dumps, seal_message
from demo.devstack.deployment import Deployment
from tecc_contract.attestation import Quote, SimulatedPlatformVerifier, VerifiedIdentity
from tecc_contract.errors import AttestationError
from tests.cloud.scenario import GATEWAYS, POLICY
from tests.cloud.services import TestGateway, http_json, metric

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def _output_identity(dep: Deployment) -> VerifiedIdentity:
    platform = dep.platform("output")
    verifier = SimulatedPlatformVerifier(
        platform_keys={platform.key_id: platform.attestation_key.public_key()},
        allowed_measurements={dep.measurement("output")},
    )
    nonce = os.urandom(32)
    _, body = http_json(f"{dep.url('output')}/attestation?nonce={nonce.hex()}")
    return verifier.verify(Quote.from_json(body), nonce=nonce, now_ns=time.time_ns(), role="output")


def _submit(dep: Deployment, party: str) -> int:
    """Sign a results message with ``party``'s real enclave key and POST it to the output."""
    enclave = Enclave.open(
        role="party",
        service_id=party,
        measurement=dep.measurement(party),
        platform=dep.platform(party),
        state_dir=dep.state_dir(party),
    )
    doc = {"layout": {"epoch_ns": 0}, "vector": ""}
    msg = seal_message(
        dumps(doc),
        purpose="results",
        sender_id=party,
        sign_key=enclave.keys.sign,
        recipient=_output_identity(dep),
    )
    req = urllib.request.Request(
        dep.url("output") + "/v1/results", data=json.dumps(msg).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_tampered_policy_cluster_gets_nothing(tmp_path: Path) -> None:
    """Gateways, the peer and the output service all refuse the cluster with the edited policy."""
    keys = {g: Ed25519PrivateKey.generate() for g in GATEWAYS}
    dep = Deployment(
        tmp_path, POLICY, keys, policy_overrides={"party1": {**POLICY, "min_count": 1}}
    )
    try:
        dep.start_all()
        with pytest.raises(AttestationError, match="allow-list"):
            TestGateway(dep, GATEWAYS[0])  # the gateway seals nothing for either cluster
        deadline = time.monotonic() + 30
        peer: dict[str, object] = {}
        while time.monotonic() < deadline and peer.get("attested") is not False:
            peer = dep.wait_healthy("party0").get("peers", {}).get("party1") or {}
            time.sleep(0.2)
        assert peer.get("attested") is False
        assert dep.wait_healthy("party0")["session"] != "running"
        refused = 'tecc_request_errors_total{endpoint="results",reason="attestation"}'
        before = metric(dep, "output", refused)
        assert _submit(dep, "party1") == 403
        assert metric(dep, "output", refused) == before + 1
        assert _submit(dep, "party0") == 400  # attested; only the content is refused
        malformed = 'tecc_request_errors_total{endpoint="results",reason="malformed"}'
        before = metric(dep, "output", malformed)
        status, _ = http_json(dep.url("output") + "/v1/results", data=b"[" * 100_000)
        assert status == 400  # deeply nested JSON: refused and counted, not a 500
        assert metric(dep, "output", malformed) == before + 1
        for since in ("inf", "1e300", "nan", "-1e19", "x"):
            status, _ = http_json(dep.url("output") + f"/api/v1/windows?since={since}")
            assert status == 400, since
        _, epochs = http_json(dep.url("output") + "/api/v1/epochs")
        assert epochs == []
    finally:
        dep.stop_all()
