"""The party's enrolment policy and state machine, in process (real swtpm, no HTTP).

Silence suspends, a good quote reinstates, changed PCRs suspend until the
operator approves the new values, operator approval parks new gateways, and a
revocation written by the operator tool is never overwritten by the party.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from cloud_tecc.errors import IngestError
from cloud_tecc.party.enrolment import Enrolment
from cloud_tecc.party.enrolment_doc import EnrolmentDoc
from cloud_tecc.party.registry import LiveKeys, Registry
from gateway.config_yaml import load_config
from gateway.enrol import TpmEvidence
from gateway.keys import GatewayKeys
from gateway.tpm import Tpm
from tecc_contract.tpm_evidence import ENROL_TAG, REQUOTE_TAG, EvidenceError
from tests.enrol.tpms import ca_bundle, manufactured_swtpm
from tests.gateway.harness import ClusterSpec, PlatformSpec, write_config
from tests.gateway.services import Swtpm

pytestmark = pytest.mark.tpm
S = 1_000_000_000
T = TypeVar("T")
BASE = time.time_ns() + 3600 * S  # after the EK certificates of the tests are issued


def at(seconds: int) -> int:
    """A test clock reading (ns)."""
    return BASE + seconds * S


@dataclass
class Rig:
    sw: Swtpm
    evidence: TpmEvidence
    bundle: Path
    state: Path

    def party(self, **policy: Any) -> Enrolment:
        doc = EnrolmentDoc(ek_ca_files=[str(self.bundle)], **policy)
        return Enrolment(doc, self.state, Registry(self.state), CollectorRegistry())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with manufactured_swtpm(tmp_path / "tpm", tmp_path / "ca") as sw:
        bundle = tmp_path / "ca.pem"
        bundle.write_bytes(ca_bundle(tmp_path / "ca"))
        (tmp_path / "gw").mkdir()
        clusters = [ClusterSpec(i, f"http://127.0.0.1:{i + 1}", f"party{i}") for i in (0, 1)]
        cfg = write_config(
            tmp_path / "gw", clusters=clusters, platform=PlatformSpec("p", "00" * 32), tcti=sw.tcti
        )
        keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
        ev = TpmEvidence(load_config(cfg), keys, lambda: Tpm(sw.tcti))
        yield Rig(sw, ev, bundle, tmp_path / "party")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """One enrolment step (a coroutine) to completion."""
    return asyncio.run(coro)


def _enrol(party: Enrolment, ev: TpmEvidence, now: int) -> dict[str, Any]:
    return run(party.finish(ev.answer(run(party.challenge(ev.request(), now)), ENROL_TAG), now))


def _requote(party: Enrolment, ev: TpmEvidence, now: int) -> dict[str, Any]:
    ch = run(party.requote_challenge({"gateway_id": "gw-test"}, now))
    return run(party.requote(ev.answer(ch, REQUOTE_TAG), now))


ZERO = {14: [bytes(32).hex()]}


def test_silence_suspends_and_a_good_quote_reinstates(rig: Rig) -> None:
    party = rig.party(pcr_values=ZERO, requote_s=10.0, grace_s=5.0)
    keys = LiveKeys({}, party.registry)
    assert _enrol(party, rig.evidence, at(100))["status"] == "enrolled"
    keys.admit("gw-test")
    assert run(party.sweep(at(114))) == []  # within requote_s + grace_s
    assert run(party.sweep(at(116))) == ["gw-test"]
    with pytest.raises(IngestError, match="suspended") as err:
        keys.admit("gw-test")
    assert err.value.reason == "suspended"
    assert _requote(party, rig.evidence, at(117))["status"] == "enrolled"
    keys.admit("gw-test")


def test_a_restarted_party_does_not_count_its_downtime_as_silence(rig: Rig) -> None:
    """A party that was down for longer than ``requote_s + grace_s`` gives its gateways
    one interval from its start to quote again before it suspends them for silence
    (fails on the code before this change: every TPM gateway was suspended, and an
    attestation incident raised for each, at the first sweep after the restart)."""
    before = rig.party(pcr_values=ZERO, requote_s=10.0, grace_s=5.0)
    assert _enrol(before, rig.evidence, at(100))["status"] == "enrolled"
    doc = EnrolmentDoc(ek_ca_files=[str(rig.bundle)], pcr_values=ZERO, requote_s=10.0, grace_s=5.0)
    after = Enrolment(  # the same state dir, started 10 minutes later
        doc, rig.state, Registry(rig.state), CollectorRegistry(), started_ns=at(700)
    )
    assert run(after.sweep(at(701))) == []
    assert run(after.sweep(at(714))) == []  # within requote_s + grace_s of the start
    assert _requote(after, rig.evidence, at(714))["status"] == "enrolled"
    assert run(after.sweep(at(729))) == []  # quoted at 714
    assert run(after.sweep(at(731))) == ["gw-test"]  # silent since 714: suspended


def test_changed_pcrs_suspend_until_the_operator_approves_the_new_values(rig: Rig) -> None:
    party = rig.party(requote_s=10.0)  # no listed values: the operator decides
    first = _enrol(party, rig.evidence, at(100))
    assert (first["status"], first["reason"]) == ("pending", "PCR(s) [14] not listed")
    run(party.registry.set_state("gw-test", "enrolled", "approved", at(101), operator=True))
    assert _requote(party, rig.evidence, at(102))["status"] == "enrolled"
    with Tpm(rig.sw.tcti) as tpm:
        tpm.extend_pcr(14, hashlib.sha256(b"update").digest())
    answer = _requote(party, rig.evidence, at(103))
    assert answer["status"] == "suspended"
    assert "PCR(s) [14] changed" in answer["reason"]
    rec = run(
        party.registry.set_state("gw-test", "enrolled", "update approved", at(104), operator=True)
    )
    assert rec.golden != {14: bytes(32)}  # the approved update's value
    assert _requote(party, rig.evidence, at(105))["status"] == "enrolled"


def test_operator_approval_parks_even_matching_gateways(rig: Rig) -> None:
    party = rig.party(pcr_values=ZERO, approval="operator")
    assert _enrol(party, rig.evidence, at(100))["status"] == "pending"
    with pytest.raises(IngestError) as err:
        LiveKeys({}, party.registry).admit("gw-test")
    assert err.value.reason == "pending"
    # re-enrolling changes nothing until approved
    assert _enrol(party, rig.evidence, at(101))["status"] == "pending"


def test_a_concurrent_revocation_is_not_overwritten_by_the_party(rig: Rig) -> None:
    """The party's snapshot predates the operator's revoke; its next write keeps it revoked.

    Fails without the check in Registry.put: the re-quote wrote ``enrolled`` back.
    """
    party = rig.party(pcr_values=ZERO)
    assert _enrol(party, rig.evidence, at(100))["status"] == "enrolled"
    ch = run(party.requote_challenge({"gateway_id": "gw-test"}, at(101)))
    admin = Registry(rig.state)
    run(admin.revoke("gw-test", "stolen", at(101)))
    admin.close()
    record = party.registry.get("gw-test")
    assert record is not None
    assert record.state == "enrolled"  # stale: not refreshed yet
    answer = run(party.requote(rig.evidence.answer(ch, REQUOTE_TAG), at(102)))
    assert answer["status"] == "revoked"
    party.registry.refresh()
    record = party.registry.get("gw-test")
    assert record is not None
    assert record.state == "revoked"


def test_another_tpm_cannot_take_over_an_enrolled_gateway_id(rig: Rig, tmp_path: Path) -> None:
    party = rig.party(pcr_values=ZERO)
    assert _enrol(party, rig.evidence, at(100))["status"] == "enrolled"
    with manufactured_swtpm(tmp_path / "tpm2", tmp_path / "ca") as sw2:  # same vendor CA
        cfg = load_config(tmp_path / "gw" / "gateway.yaml")
        keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
        other = TpmEvidence(cfg, keys, lambda: Tpm(sw2.tcti))
        with pytest.raises(EvidenceError, match="enrolled with another TPM") as err:
            run(party.challenge({**other.request()}, at(101)))
    assert err.value.reason == "conflict"


def test_hostile_fields_raise_only_evidence_errors(rig: Rig) -> None:
    """Every field of both steps replaced by junk: a refusal with a reason, never a crash."""
    party = rig.party(pcr_values=ZERO)
    request = rig.evidence.request()
    junk: list[object] = [None, 7, "", "%%%", "AAAA", base64.b64encode(os.urandom(300)).decode()]
    for field in request:
        values = [None, 7, "", "x" * 201] if field == "gateway_id" else junk
        for value in values:
            with pytest.raises(EvidenceError):
                run(party.challenge({**request, field: value}, at(1)))
    challenge = run(party.challenge(request, at(2)))
    answer = rig.evidence.answer(challenge, ENROL_TAG)
    for field in answer:
        for value in [*junk, {"14": "zz"}, {"x": "00"}, ["a"]]:
            ch = run(party.challenge(request, at(3)))
            good = rig.evidence.answer(ch, ENROL_TAG)
            with pytest.raises(EvidenceError):
                run(party.finish({**good, field: value}, at(3)))


def test_a_tpm_cannot_enrol_under_a_gateway_id_the_config_names(rig: Rig) -> None:
    """An id in the party's ``gateways:`` is not free: another identity key is a conflict.

    Fails on the code before this change: only registry records were checked, so
    the genuine TPM enrolled ``gw-test`` with its own identity key, and the
    registry's key then verified the batches of the configured gateway's id.
    """
    configured = Ed25519PrivateKey.generate().public_key()
    party = rig.party(pcr_values=ZERO)
    party.static = {"gw-test": configured.public_bytes_raw()}
    with pytest.raises(EvidenceError, match="configured with another identity key") as err:
        run(party.challenge(rig.evidence.request(), at(100)))
    assert err.value.reason == "conflict"
    # the config names the id after the challenge was issued: finish refuses too
    party.static = {}
    challenge = run(party.challenge(rig.evidence.request(), at(101)))
    party.static = {"gw-test": configured.public_bytes_raw()}
    with pytest.raises(EvidenceError, match="configured with another identity key") as err:
        run(party.finish(rig.evidence.answer(challenge, ENROL_TAG), at(101)))
    assert err.value.reason == "conflict"
    assert party.registry.get("gw-test") is None
    # the constructor takes the configured keys
    built = Enrolment(
        EnrolmentDoc(ek_ca_files=[str(rig.bundle)], pcr_values=ZERO),
        rig.state,
        party.registry,
        CollectorRegistry(),
        static={"gw-test": configured},
    )
    with pytest.raises(EvidenceError, match="configured with another identity key"):
        run(built.challenge(rig.evidence.request(), at(102)))


def test_the_configured_key_wins_over_an_enrolled_one(rig: Rig) -> None:
    """A registry record for a configured id (enrolled before the config named it) is ignored.

    Fails on the code before this change: LiveKeys preferred the registry's key.
    """
    party = rig.party(pcr_values=ZERO)
    assert _enrol(party, rig.evidence, at(100))["status"] == "enrolled"
    configured = Ed25519PrivateKey.generate().public_key()
    keys = LiveKeys({"gw-test": configured}, party.registry)
    assert keys["gw-test"].public_bytes_raw() == configured.public_bytes_raw()
    with pytest.raises(KeyError):
        keys["gw-unknown"]


def _fresh_keys(rig: Rig, sw: Swtpm, where: str = "gw") -> tuple[GatewayKeys, TpmEvidence]:
    """New identity keys for gateway ``gw-test`` on TPM ``sw``, its state in ``where``."""
    path = rig.state.parent / where
    if not path.exists():
        path.mkdir()
        clusters = [ClusterSpec(i, f"http://127.0.0.1:{i + 1}", f"party{i}") for i in (0, 1)]
        write_config(path, clusters=clusters, platform=PlatformSpec("p", "00" * 32), tcti=sw.tcti)
    cfg = load_config(path / "gateway.yaml")
    keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
    return keys, TpmEvidence(cfg, keys, lambda: Tpm(sw.tcti))


def test_a_claim_challenged_before_the_id_was_enrolled_cannot_take_it_over(
    rig: Rig, tmp_path: Path
) -> None:
    """Another genuine TPM (same vendor CA, approved PCRs) asks its challenge while the id
    is still free; the real gateway enrols; the claim's finish is refused and the record kept.

    Fails on the code before this change: finish did not compare EK fingerprints, so
    the claim overwrote the record (enrolled, the claimant's identity key).
    """
    party = rig.party(pcr_values=ZERO)
    with manufactured_swtpm(tmp_path / "tpm2", tmp_path / "ca") as sw2:
        _, other = _fresh_keys(rig, sw2, "gw2")
        claim = run(party.challenge(other.request(), at(100)))
        assert _enrol(party, rig.evidence, at(101))["status"] == "enrolled"
        before = party.registry.get("gw-test")
        with pytest.raises(EvidenceError, match="enrolled with another TPM") as err:
            run(party.finish(other.answer(claim, ENROL_TAG), at(102)))
    assert err.value.reason == "conflict"
    assert "EK fingerprint" in str(err.value)
    assert party.registry.get("gw-test") == before
    assert before is not None
    assert before.identity_key == bytes.fromhex(rig.evidence.request()["identity_key"])
    LiveKeys({}, party.registry).admit("gw-test")  # the real gateway's data is still accepted


def test_a_claim_over_other_pcrs_does_not_suspend_the_gateway_holding_the_id(
    rig: Rig, tmp_path: Path
) -> None:
    """As above, the claimant's quote over PCR values the policy does not list: refused as a
    ``conflict``, and the real gateway stays enrolled (fails on the code before this
    change: the ``pcr`` refusal suspended the enrolled record of the other TPM)."""
    party = rig.party(pcr_values=ZERO)
    with manufactured_swtpm(tmp_path / "tpm2", tmp_path / "ca") as sw2:
        _, other = _fresh_keys(rig, sw2, "gw2")
        claim = run(party.challenge(other.request(), at(100)))
        assert _enrol(party, rig.evidence, at(101))["status"] == "enrolled"
        with Tpm(sw2.tcti) as tpm:
            tpm.extend_pcr(14, hashlib.sha256(b"other software").digest())
        with pytest.raises(EvidenceError, match="enrolled with another TPM") as err:
            run(party.finish(other.answer(claim, ENROL_TAG), at(102)))
    assert err.value.reason == "conflict"
    rec = party.registry.get("gw-test")
    assert rec is not None
    assert rec.state == "enrolled"


@pytest.mark.parametrize("approval", ["auto", "operator"])
def test_the_same_tpm_rotates_its_identity_key_by_enrolling_again(rig: Rig, approval: str) -> None:
    """Same EK, same enrolled PCR values, a new identity key: enrolled with the new key at
    once, also where new gateways wait for the operator (fails on the code before this
    change with ``approval: operator``: the enrolled gateway fell back to ``pending``)."""
    party = rig.party(pcr_values=ZERO, approval=approval)
    old, first = _fresh_keys(rig, rig.sw)
    if approval == "operator":
        assert _enrol(party, first, at(100))["status"] == "pending"
        run(party.registry.set_state("gw-test", "enrolled", "approved", at(100), operator=True))
    else:
        assert _enrol(party, first, at(100))["status"] == "enrolled"
    live = LiveKeys({}, party.registry)
    assert live["gw-test"].public_bytes_raw() == old.public_raw
    new, rotated = _fresh_keys(rig, rig.sw)
    answer = _enrol(party, rotated, at(101))
    assert (answer["status"], answer["reason"]) == ("enrolled", "identity key rotated")
    rec = party.registry.get("gw-test")
    assert rec is not None
    assert rec.identity_key == new.public_raw
    assert live["gw-test"].public_bytes_raw() == new.public_raw
    live.admit("gw-test")
    # a quote bound to the old key no longer matches the enrolled one
    with pytest.raises(EvidenceError, match="does not cover this verifier's nonce and the"):
        _requote(party, first, at(102))
    assert _requote(party, rotated, at(103))["status"] == "enrolled"
