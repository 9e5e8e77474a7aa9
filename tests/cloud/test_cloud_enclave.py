"""Simulated enclave: measurement, sealing, quotes and the verifier."""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloud_tecc.analytics.policy import AnalyticsPolicy, Release, policy_from_mapping
from cloud_tecc.config import load_party
from cloud_tecc.enclave.identity import Enclave
from cloud_tecc.enclave.measurement import bundle_listing, measure, package_root
from cloud_tecc.enclave.platform import SimulatedPlatform
from cloud_tecc.enclave.sealing import seal, sealing_key, unseal
from cloud_tecc.enclave.tls import listener_tls, self_signed
from cloud_tecc.errors import CloudConfigError, SealError
from tecc_contract.attestation import TLS_CLAIM, SimulatedPlatformVerifier, tls_spki_digest
from tecc_contract.errors import AttestationError


def test_measurement_depends_on_policy_and_is_stable() -> None:
    """Same bundle and policy give the same measurement; any policy change alters it."""
    base = AnalyticsPolicy()
    assert measure(base.canonical_bytes()) == measure(base.canonical_bytes())
    fewer = policy_from_mapping({"release": ["count", "mean"]})
    lower = policy_from_mapping({"min_count": 1})
    ms = {measure(p.canonical_bytes()) for p in (base, fewer, lower)}
    assert len(ms) == 3


def test_bundle_listing_covers_sources_and_reacts_to_edits(tmp_path: Path) -> None:
    """The listing names every source file with its digest; editing one changes it."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    before = bundle_listing([pkg])
    assert b"pkg/a.py" in before
    assert b"pyc" not in before
    (pkg / "a.py").write_text("x = 2\n")
    assert bundle_listing([pkg]) != before
    assert b"cloud_tecc/enclave/measurement.py" in bundle_listing([package_root("cloud_tecc")])


def test_sealing_binds_the_measurement() -> None:
    """Data sealed under one measurement does not open under another."""
    secret = os.urandom(32)
    k1, k2 = sealing_key(secret, b"\x01" * 32), sealing_key(secret, b"\x02" * 32)
    blob = seal(k1, b"private keys", aad=b"ctx")
    assert unseal(k1, blob, aad=b"ctx") == b"private keys"
    with pytest.raises(SealError, match="measurement"):
        unseal(k2, blob, aad=b"ctx")
    with pytest.raises(SealError):
        unseal(k1, blob, aad=b"other")


def test_enclave_keys_survive_restart_but_not_a_changed_build(tmp_path: Path) -> None:
    """Reopening with the same measurement unseals the same keys; another one fails."""
    platform = SimulatedPlatform.load_or_create(tmp_path / "platform")
    m1, m2 = b"\x11" * 32, b"\x22" * 32
    e1 = Enclave.open(
        role="party", service_id="p0", measurement=m1, platform=platform, state_dir=tmp_path / "p0"
    )
    again = Enclave.open(
        role="party", service_id="p0", measurement=m1, platform=platform, state_dir=tmp_path / "p0"
    )
    assert again.public_keys() == e1.public_keys()
    with pytest.raises(SealError):
        Enclave.open(
            role="party",
            service_id="p0",
            measurement=m2,
            platform=platform,
            state_dir=tmp_path / "p0",
        )


def test_quotes_verify_against_the_allow_list(tmp_path: Path) -> None:
    """A fresh quote verifies; a wrong nonce, platform or measurement is refused."""
    platform = SimulatedPlatform.load_or_create(tmp_path / "platform")
    other = SimulatedPlatform.load_or_create(tmp_path / "other")
    good = measure(AnalyticsPolicy().canonical_bytes())
    enclave = Enclave.open(
        role="output",
        service_id="out",
        measurement=good,
        platform=platform,
        state_dir=tmp_path / "out",
    )
    verifier = SimulatedPlatformVerifier(
        platform_keys={platform.key_id: platform.attestation_key.public_key()},
        allowed_measurements={good},
    )
    nonce, now = os.urandom(32), time.time_ns()
    ident = verifier.verify(enclave.quote(nonce, now), nonce=nonce, now_ns=now, role="output")
    assert ident.keys["hpke"] == enclave.public_keys()["hpke"]
    with pytest.raises(AttestationError, match="nonce"):
        verifier.verify(enclave.quote(os.urandom(32), now), nonce=nonce, now_ns=now)
    rogue = Enclave.open(
        role="output",
        service_id="out",
        measurement=good,
        platform=other,
        state_dir=tmp_path / "rogue",
    )
    with pytest.raises(AttestationError, match="unknown platform"):
        verifier.verify(rogue.quote(nonce, now), nonce=nonce, now_ns=now)
    edited = Enclave.open(
        role="output",
        service_id="out",
        measurement=b"\x00" * 32,
        platform=platform,
        state_dir=tmp_path / "edited",
    )
    with pytest.raises(AttestationError, match="allow-list"):
        verifier.verify(edited.quote(nonce, now), nonce=nonce, now_ns=now)


def test_policy_validation_errors_are_clear() -> None:
    """Bad policies are refused with a message naming the problem."""
    with pytest.raises(CloudConfigError, match=r"\$\.release_raw: unknown key"):
        policy_from_mapping({"release_raw": True})
    with pytest.raises(
        CloudConfigError, match=r"\$\.release\[0\]: Invalid enum value .values.; write one of count"
    ):
        policy_from_mapping({"release": ["values"]})
    with pytest.raises(CloudConfigError, match="value_bound_bits"):
        policy_from_mapping({"value_bound_bits": 13})
    # limits are in the sensor's unit, any magnitude (the gateway scales each range)
    assert policy_from_mapping({"limits": [{"sensor": "*", "low": 0, "high": 10_000}]})
    assert Release.MEAN in AnalyticsPolicy().release


def test_the_tls_key_is_the_enclaves_and_its_quotes_name_it(tmp_path: Path) -> None:
    """The listener key is sealed with the service keys, stable, and bound in every quote.

    Fails on the code before this change: services had no TLS key and quotes
    no ``tls_spki`` claim, so a gateway could not authenticate a party's TLS.
    """
    platform = SimulatedPlatform.load_or_create(tmp_path / "platform")
    m = b"\x11" * 32
    opened = [
        Enclave.open(
            role="party", service_id="p0", measurement=m, platform=platform, state_dir=tmp_path
        )
        for _ in range(2)
    ]
    key = opened[0].keys.tls_der
    assert key == opened[1].keys.tls_der
    assert len(key) > 100
    assert key not in (tmp_path / "sealed_keys.bin").read_bytes()  # sealed, not in clear
    ctx, spki = listener_tls(key, "p0", ["127.0.0.1"])
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    cert = x509.load_pem_x509_certificate(self_signed(key, "p0", []))
    assert spki == tls_spki_digest(cert.public_bytes(serialization.Encoding.DER))
    quote = replace(opened[0], tls_spki=spki).quote(os.urandom(32), time.time_ns())
    assert quote.claims[TLS_CLAIM] == spki
    assert TLS_CLAIM not in opened[0].quote(os.urandom(32), time.time_ns()).claims


def test_party_plain_http_is_explicit(tmp_path: Path) -> None:
    """A party serves TLS by default; tls: off only on loopback or with insecure_plain_http.

    Fails on the code before this change (no ``tls`` key: every party served plain HTTP).
    """
    example = (package_root("cloud_tecc").parent / "configs" / "cluster0.yaml").read_text()
    path = tmp_path / "configs" / "cluster0.yaml"
    path.parent.mkdir()
    (path.parent / "policy.yaml").write_text(
        (package_root("cloud_tecc").parent / "configs" / "policy.yaml").read_text()
    )
    path.write_text(example)
    assert load_party(path).tls
    path.write_text(example.replace("\ntls: true", "\ntls: off"))
    assert not load_party(path).tls
    remote = example.replace("\ntls: true", "\ntls: off").replace(
        "host: 127.0.0.1", "host: 0.0.0.0"
    )
    path.write_text(remote)
    with pytest.raises(CloudConfigError, match=r"tls: off on the non-loopback .*insecure_plain"):
        load_party(path)
    path.write_text(remote.replace("\ntls: off", "\ntls: off\ninsecure_plain_http: true"))
    assert not load_party(path).tls
