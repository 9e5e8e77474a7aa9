"""Trust domains, quote identity, cluster distinctness and ingest answers, in-process.

Each test fails on the code before this change (stated per test).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.config import Trust
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.enclave.trust import build_verifier
from cloud_tecc.errors import IngestError
from cloud_tecc.party.ingest import SIGNATURE_REFUSED, Ingestor, public_error
from tecc_contract.attestation import ClusterRegistry, VerifiedIdentity
from tecc_contract.envelope import ClusterKey, Sealer, SensorSegment
from tecc_contract.errors import AttestationError
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw, load_private_key

M = b"m" * 32


def _enclave(tmp: Path, platform: SimulatedPlatform, role: str, sid: str) -> Enclave:
    return Enclave.open(
        role=role,
        service_id=sid,
        measurement=M,
        platform=platform,
        state_dir=tmp / f"{sid}-{platform.key_id}",
    )


def test_a_platform_vouches_only_for_its_own_service(tmp_path: Path) -> None:
    """party0's platform root cannot vouch for party1 or the dealer (one root per domain).

    Fails on the code before this change: any trusted platform key vouched for any service.
    """
    plats = {n: SimulatedPlatform.load_or_create(tmp_path / f"p-{n}") for n in ("p0", "p1", "d")}
    trust = Trust(
        allowed_measurements=(M.hex(),),
        platform_keys={
            "party-0": plats["p0"].public_key_hex,
            "party-1": plats["p1"].public_key_hex,
            "dealer": plats["d"].public_key_hex,
        },
    )
    verifier = build_verifier(trust, plats["p0"], M)
    now, nonce = time.time_ns(), os.urandom(32)
    good = _enclave(tmp_path, plats["p1"], "party", "party-1").quote(nonce, now)
    assert verifier.verify(good, nonce=nonce, now_ns=now, role="party", service_id="party-1")
    forged = _enclave(tmp_path, plats["p0"], "party", "party-1").quote(nonce, now)
    with pytest.raises(AttestationError, match="root of"):
        verifier.verify(forged, nonce=nonce, now_ns=now, role="party", service_id="party-1")
    fake_dealer = _enclave(tmp_path, plats["p0"], "dealer", "dealer").quote(nonce, now)
    with pytest.raises(AttestationError, match="root of"):
        verifier.verify(fake_dealer, nonce=nonce, now_ns=now, role="dealer", service_id="dealer")


def test_the_verifier_checks_role_and_service_id(tmp_path: Path) -> None:
    """A valid quote of party-0 is refused where party-1 (or a dealer) is expected.

    Fails on the code before this change: verify() took no service id.
    """
    plat = SimulatedPlatform.load_or_create(tmp_path / "p")
    verifier = build_verifier(Trust(allowed_measurements=(M.hex(),)), plat, M)
    now, nonce = time.time_ns(), os.urandom(32)
    q = _enclave(tmp_path, plat, "party", "party-0").quote(nonce, now)
    with pytest.raises(AttestationError, match="expected 'party-1'"):
        verifier.verify(q, nonce=nonce, now_ns=now, role="party", service_id="party-1")
    with pytest.raises(AttestationError, match="need dealer"):
        verifier.verify(q, nonce=nonce, now_ns=now, role="dealer", service_id="party-0")


def _ident(sid: str, hpke: bytes, sign: bytes, platform: str = "sim-1") -> VerifiedIdentity:
    return VerifiedIdentity(
        role="party",
        service_id=sid,
        measurement=M,
        keys={"hpke": hpke, "sign": sign},
        hpke_suite="x25519",
        verified_ns=0,
        platform_key_id=platform,
    )


def test_gateway_refuses_two_clusters_with_one_id_or_key() -> None:
    """Two clusters with the same service id, or presenting the same key, are refused.

    Fails on the code before this change (there was no such check).
    """
    reg = ClusterRegistry()
    reg.claim(0, _ident("party0", b"h0", b"s0"))
    with pytest.raises(AttestationError, match="both attest as"):
        reg.claim(1, _ident("party0", b"h1", b"s1"))
    with pytest.raises(AttestationError, match="same key"):
        reg.claim(1, _ident("party1", b"h0", b"s1"))
    with pytest.raises(AttestationError, match="same key"):
        reg.claim(1, _ident("party1", b"h1", b"s0"))
    reg.claim(1, _ident("party1", b"h1", b"s1"))
    reg.claim(0, _ident("party0", b"h0-rotated", b"s0"))  # a cluster may re-key itself


def test_quote_carries_the_config_digest(tmp_path: Path) -> None:
    """The quote's ``config`` claim is signed and differs when the security config differs.

    Fails on the code before this change: quotes carried no config claim.
    """
    plat = SimulatedPlatform.load_or_create(tmp_path / "p")
    a = Enclave.open(
        role="party",
        service_id="party-0",
        measurement=M,
        platform=plat,
        state_dir=tmp_path / "a",
        config=b"\x01" * 32,
    )
    b = Enclave.open(
        role="party",
        service_id="party-0",
        measurement=M,
        platform=plat,
        state_dir=tmp_path / "a",
        config=b"\x02" * 32,
    )
    qa, qb = a.quote(b"n" * 32, 1), b.quote(b"n" * 32, 1)
    assert qa.claims["config"] == ("01" * 32)
    assert qa.claims != qb.claims
    assert qa.signed_bytes() != qb.signed_bytes()


def _frames(created_ns: int, gw_key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    priv, pub = generate_cluster_keypair_raw(KemSuite.X25519)
    _, pub1 = generate_cluster_keypair_raw(KemSuite.X25519)
    sealer = Sealer(
        gateway_id="gw",
        signing_key=gw_key,
        clusters=[ClusterKey(0, KemSuite.X25519, pub), ClusterKey(1, KemSuite.X25519, pub1)],
        columns=(Column.VALUE,),
    )
    ts = np.arange(3, dtype=np.int64) + created_ns
    frames = sealer.seal(1, [SensorSegment("s", ts, np.ones(3))], created_ns=created_ns)
    return frames[0], priv


def test_a_frame_older_than_retention_is_refused_as_expired() -> None:
    """A captured frame replayed after retention_s is refused (``expired``), not stored anew.

    Fails on the code before this change: the same frame was accepted again.
    """
    gw = Ed25519PrivateKey.generate()
    now = time.time_ns()
    frame, priv = _frames(now - 2 * 10**9 * 3600, gw)
    ing = Ingestor(
        party=0,
        n_parties=2,
        suite=KemSuite.X25519,
        private_key=load_private_key(KemSuite.X25519, priv),
        gateway_keys={"gw": gw.public_key()},
        retention_s=3600.0,
        service_id="party-0",
        sign_key=Ed25519PrivateKey.generate(),
    )
    with pytest.raises(IngestError) as info:
        ing.prepare(frame, received_ns=now)
    assert info.value.reason == "expired"
    fresh, priv2 = _frames(now, gw)
    ing2 = Ingestor(
        party=0,
        n_parties=2,
        suite=KemSuite.X25519,
        private_key=load_private_key(KemSuite.X25519, priv2),
        gateway_keys={"gw": gw.public_key()},
        retention_s=3600.0,
        service_id="party-0",
        sign_key=Ed25519PrivateKey.generate(),
    )
    assert ing2.prepare(fresh, received_ns=now).count == 3


def test_unknown_gateway_and_bad_signature_get_the_same_answer() -> None:
    """The caller cannot tell an unknown gateway from a wrong signature (no enumeration).

    Fails on the code before this change: the answer said "is not enrolled".
    """
    gw, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    frame, priv = _frames(time.time_ns(), gw)
    answers = []
    for keys in ({"other": other.public_key()}, {"gw": other.public_key()}):
        ing = Ingestor(
            party=0,
            n_parties=2,
            suite=KemSuite.X25519,
            private_key=load_private_key(KemSuite.X25519, priv),
            gateway_keys=keys,
            service_id="party-0",
            sign_key=Ed25519PrivateKey.generate(),
        )
        with pytest.raises(IngestError) as info:
            ing.prepare(frame, received_ns=time.time_ns())
        assert info.value.reason == "signature"
        answers.append(public_error(info.value))
    assert answers == [SIGNATURE_REFUSED, SIGNATURE_REFUSED]
    assert "gw" not in SIGNATURE_REFUSED
