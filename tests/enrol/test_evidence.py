"""TPM enrolment evidence from a real swtpm, verified by the pure verifier.

Each refusal the issue names is shown here at the evidence level: an EK
certificate from an unknown CA, an AK not bound to the EK, a stale or
replayed nonce, a quote over changed PCRs; the service-level tests
(test_party_enrolment.py) show the same through real processes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import TpmError
from gateway.tpm import Tpm
from gateway.tpm_identity import AkBlob, activate, endorsement, load_or_create_ak, quote
from tecc_contract import tpm_evidence as ev
from tests.enrol.tpms import ca_bundle, manufactured_swtpm

pytestmark = pytest.mark.tpm


@dataclass
class Device:
    tpm: Tpm
    ek_cert: bytes
    ek_public: bytes
    ak: AkBlob


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[tuple[Device, Device, Path, Path]]:
    """Two TPMs: the first from manufacturer A, the second from manufacturer B."""
    ca_a, ca_b = tmp_path / "ca-a", tmp_path / "ca-b"
    with (
        manufactured_swtpm(tmp_path / "tpm1", ca_a) as s1,
        manufactured_swtpm(tmp_path / "tpm2", ca_b) as s2,
        Tpm(s1.tcti) as t1,
        Tpm(s2.tcti) as t2,
    ):
        out = []
        for i, t in enumerate((t1, t2)):
            cert, pub = endorsement(t)
            out.append(Device(t, cert, pub, load_or_create_ak(t, tmp_path / f"state{i}")))
        yield out[0], out[1], ca_a, ca_b


def test_genuine_device_passes_every_check(devices: tuple[Device, Device, Path, Path]) -> None:
    d, _, ca_a, _ = devices
    ek = ev.verify_ek(d.ek_cert, d.ek_public, ev.load_cas(ca_bundle(ca_a)), datetime.now(UTC))
    ak = ev.check_ak(d.ak.public)
    secret = os.urandom(32)
    cred = ev.make_challenge(ek, ak, secret)
    ev.check_activation(secret, activate(d.tpm, d.ak, cred.blob, cred.secret))
    ident = Ed25519PrivateKey.generate()
    raw = ident.public_key().public_bytes_raw()
    q = ev.qualifying_data(ev.ENROL_TAG, "gw-1", raw, os.urandom(32))
    evidence = quote(d.tpm, d.ak, [14], q)
    ev.verify_quote(ak, evidence.attest, evidence.signature, evidence.pcrs, q)
    ev.verify_possession(raw, ident.sign(q), q)
    assert evidence.pcrs[14] == bytes(32)
    assert ev.check_pcrs(evidence.pcrs, {14: [bytes(32)]}, [14]) == []


def test_the_ak_is_kept_in_the_state_dir(
    tmp_path: Path, devices: tuple[Device, Device, Path, Path]
) -> None:
    d = devices[0]
    assert load_or_create_ak(d.tpm, tmp_path / "state0") == d.ak
    assert load_or_create_ak(d.tpm, tmp_path / "fresh") != d.ak


def test_ek_certificate_from_an_unknown_ca_is_refused(
    devices: tuple[Device, Device, Path, Path],
) -> None:
    d, _, _, ca_b = devices
    with pytest.raises(ev.EvidenceError, match="does not chain") as err:
        ev.verify_ek(d.ek_cert, d.ek_public, ev.load_cas(ca_bundle(ca_b)), datetime.now(UTC))
    assert err.value.reason == "ek_ca"


def test_chain_outside_its_validity_is_refused(devices: tuple[Device, Device, Path, Path]) -> None:
    d, _, ca_a, _ = devices
    before = datetime(2000, 1, 1, tzinfo=UTC)  # swtpm_localca certifies until 9999
    with pytest.raises(ev.EvidenceError, match="not valid at") as err:
        ev.verify_ek(d.ek_cert, d.ek_public, ev.load_cas(ca_bundle(ca_a)), before)
    assert err.value.reason == "ek_ca"


def test_another_tpms_ek_public_under_this_certificate_is_refused(
    devices: tuple[Device, Device, Path, Path],
) -> None:
    a, b, ca_a, _ = devices
    with pytest.raises(ev.EvidenceError) as err:
        ev.verify_ek(a.ek_cert, b.ek_public, ev.load_cas(ca_bundle(ca_a)), datetime.now(UTC))
    assert err.value.reason == "ek_mismatch"


def test_ak_not_bound_to_the_ek_cannot_activate(
    devices: tuple[Device, Device, Path, Path],
) -> None:
    """TPM A's certified EK presented with TPM B's AK: neither TPM recovers the secret."""
    a, b, ca_a, _ = devices
    ek = ev.verify_ek(a.ek_cert, a.ek_public, ev.load_cas(ca_bundle(ca_a)), datetime.now(UTC))
    secret = os.urandom(32)
    cred = ev.make_challenge(ek, ev.check_ak(b.ak.public), secret)
    with pytest.raises(TpmError, match="refused to activate"):
        activate(b.tpm, b.ak, cred.blob, cred.secret)  # B lacks A's EK
    with pytest.raises(TpmError, match="refused to activate"):
        activate(a.tpm, a.ak, cred.blob, cred.secret)  # A's own AK has another name
    with pytest.raises(ev.EvidenceError) as err:
        ev.check_activation(secret, os.urandom(32))  # whatever the gateway answers instead
    assert err.value.reason == "ak_not_bound"


def test_a_non_restricted_key_is_not_an_attestation_key(
    devices: tuple[Device, Device, Path, Path],
) -> None:
    d, _, _, _ = devices
    with pytest.raises(ev.EvidenceError) as err:
        ev.check_ak(d.ek_public)  # a decrypt key
    assert err.value.reason == "ak_attributes"


def test_quote_for_another_nonce_or_tampered_is_refused(
    devices: tuple[Device, Device, Path, Path],
) -> None:
    d, _, _, _ = devices
    ak = ev.check_ak(d.ak.public)
    raw = bytes(32)
    q = ev.qualifying_data(ev.REQUOTE_TAG, "gw-1", raw, b"n" * 32)
    e = quote(d.tpm, d.ak, [14], q)
    other = ev.qualifying_data(ev.REQUOTE_TAG, "gw-1", raw, b"m" * 32)
    with pytest.raises(ev.EvidenceError) as err:
        ev.verify_quote(ak, e.attest, e.signature, e.pcrs, other)
    assert err.value.reason == "nonce"
    bad = bytearray(e.attest)
    bad[-1] ^= 1
    with pytest.raises(ev.EvidenceError) as err:
        ev.verify_quote(ak, bytes(bad), e.signature, e.pcrs, q)
    assert err.value.reason == "quote_signature"


def test_quote_over_changed_pcrs_is_detected(devices: tuple[Device, Device, Path, Path]) -> None:
    """After an extension the values differ from the golden ones; lying about them fails."""
    d, _, _, _ = devices
    ak = ev.check_ak(d.ak.public)
    golden = {14: [bytes(32)]}
    d.tpm.extend_pcr(14, hashlib.sha256(b"other code").digest())
    q = ev.qualifying_data(ev.REQUOTE_TAG, "gw-1", bytes(32), b"n" * 32)
    e = quote(d.tpm, d.ak, [14], q)
    ev.verify_quote(ak, e.attest, e.signature, e.pcrs, q)  # an honest quote of new values
    assert ev.check_pcrs(e.pcrs, golden, [14]) == [14]
    with pytest.raises(ev.EvidenceError, match="do not match the quoted digest") as err:
        ev.verify_quote(ak, e.attest, e.signature, {14: bytes(32)}, q)  # claiming the old
    assert err.value.reason == "pcr"
    with pytest.raises(ev.EvidenceError, match="does not cover") as err:
        ev.check_pcrs(e.pcrs, golden, [7, 14])
