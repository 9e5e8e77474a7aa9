"""Release manifests: signing, canonical encoding and every refusal of the verifier."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tecc_contract.attestation import Quote, SimulatedPlatformVerifier, sign_quote
from tecc_contract.errors import AttestationError
from tecc_contract.manifest import (
    POLICY_CLAIM,
    ManifestError,
    ReleaseEntry,
    ReleaseManifest,
    load_owner_public,
    owner_key_id,
    policy_digest,
    sign_manifest,
    verify_manifest,
)

OWNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
M = bytes.fromhex("11" * 32)
P = policy_digest(b"policy-bytes")
T0 = 1_700_000_000 * 10**9
DAY = 86_400 * 10**9


def manifest(
    *, issued: int = T0, days: int = 30, key: Ed25519PrivateKey = OWNER, note: str = "v1"
) -> ReleaseManifest:
    """A signed manifest allowing build (M, P) as a party."""
    unsigned = ReleaseManifest(
        owner_key_id=owner_key_id(key.public_key()),
        issued_ns=issued,
        not_after_ns=issued + days * DAY,
        entries=(ReleaseEntry(M, P, frozenset({"party"}), note),),
    )
    return sign_manifest(unsigned, key)


def verify(data: bytes, current: ReleaseManifest | None = None) -> ReleaseManifest:
    """``verify_manifest`` with the owner key, one hour after T0."""
    return verify_manifest(data, OWNER.public_key(), now_ns=T0 + 3600 * 10**9, current=current)


def reason(data: bytes, current: ReleaseManifest | None = None) -> str:
    """The refusal reason of ``data``."""
    with pytest.raises(ManifestError) as info:
        verify(data, current)
    return info.value.reason


def test_signed_manifest_round_trips_and_allows_its_entry() -> None:
    """A manifest verifies, and allows exactly its (measurement, policy digest, kind)."""
    m = verify(manifest().to_bytes())
    assert m == manifest()
    assert m.allows(M, P, "party")
    assert not m.allows(M, P, "dealer")
    assert not m.allows(M, policy_digest(b"other"), "party")
    assert not m.allows(bytes(32), P, "party")


def test_canonical_encoding_is_fixed() -> None:
    """The signed bytes are the domain tag and sorted, compact JSON (a fixed vector)."""
    want = (
        b'tecc-release-manifest-v1\n{"entries":[{"measurement":"' + b"11" * 32 + b'","note":"v1",'
        b'"policy_digest":"' + P.hex().encode() + b'","services":["party"]}],'
        b'"issued_ns":1700000000000000000,"not_after_ns":1702592000000000000,'
        b'"owner_key_id":"' + owner_key_id(OWNER.public_key()).encode() + b'","version":1}'
    )
    assert manifest().signed_bytes() == want


def test_reformatted_json_still_verifies() -> None:
    """Whitespace and key order of the served JSON do not matter; the values do."""
    doc = json.loads(manifest().to_bytes())
    shuffled = dict(reversed(list(doc.items())))
    assert verify(json.dumps(shuffled).encode()) == manifest()


def test_any_changed_value_breaks_the_signature() -> None:
    """Editing an entry, the validity or a note after signing is a bad signature."""
    good = json.loads(manifest().to_bytes())
    edits = [
        ("not_after_ns", good["not_after_ns"] + 1),
        ("entries", [{**good["entries"][0], "measurement": "22" * 32}]),
        ("entries", [{**good["entries"][0], "note": "v2"}]),
        ("entries", [{**good["entries"][0], "services": ["dealer", "party"]}]),
    ]
    for key, value in edits:
        assert reason(json.dumps({**good, key: value}).encode()) == "signature", key


def test_unsigned_and_foreign_manifests_are_refused() -> None:
    """No signature, another signer (named honestly or not) are refused."""
    unsigned = replace(manifest(), signature=b"")
    assert reason(unsigned.to_bytes()) == "signature"
    assert reason(manifest(key=OTHER).to_bytes()) == "signer"
    # another key's signature over a manifest claiming the owner's key id
    forged = replace(manifest(), signature=OTHER.sign(manifest().signed_bytes()))
    assert reason(forged.to_bytes()) == "signature"


def test_expired_and_future_manifests_are_refused() -> None:
    """Past not_after_ns: expired; issued beyond the skew allowance: not yet valid."""
    assert reason(manifest(issued=T0 - 40 * DAY).to_bytes()) == "expired"
    assert reason(manifest(issued=T0 + DAY).to_bytes()) == "not_yet_valid"
    # within the allowed skew (5 minutes) a manifest issued "ahead" is fine
    verify(manifest(issued=T0 + 3600 * 10**9 + 60 * 10**9).to_bytes())


def test_downgrade_is_refused_and_the_same_manifest_accepted_again() -> None:
    """Older than the one in force: downgrade; the same one again passes; a different one
    with the same issued_ns is a downgrade too."""
    newer = manifest(issued=T0 + 10)
    assert reason(manifest().to_bytes(), current=newer) == "downgrade"
    assert verify(newer.to_bytes(), current=newer) == newer
    same_time = manifest(issued=T0 + 10, note="other")
    assert reason(same_time.to_bytes(), current=newer) == "downgrade"
    assert verify(manifest(issued=T0 + 20).to_bytes(), current=newer).issued_ns == T0 + 20


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b"x" * (64 * 1024 + 1),
    ],
)
def test_malformed_bytes_are_refused(data: bytes) -> None:
    """Non-JSON, wrong shapes and oversized bodies are malformed."""
    assert reason(data) == "malformed"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("version", 2),
        ("issued_ns", "1"),
        ("issued_ns", True),
        ("entries", []),
        ("entries", [{"measurement": "11" * 32}]),
        ("entries", "none"),
        ("signature", "***"),
        ("extra", 1),
    ],
)
def test_malformed_fields_are_refused(key: str, value: object) -> None:
    """Wrong types, unknown or missing fields, no entries, bad base64 are malformed."""
    doc = {**json.loads(manifest().to_bytes()), key: value}
    assert reason(json.dumps(doc).encode()) == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("measurement", "11" * 31),
        ("measurement", "AB" * 32),
        ("policy_digest", "zz" * 32),
        ("services", ["gateway"]),
        ("services", []),
        ("services", ["party", "dealer"]),
        ("note", "n" * 201),
    ],
)
def test_malformed_entries_are_refused(field: str, value: object) -> None:
    """Short or uppercase hex, unknown, empty or unsorted service kinds, long notes."""
    doc = json.loads(manifest().to_bytes())
    doc["entries"] = [{**doc["entries"][0], field: value}]
    assert reason(json.dumps(doc).encode()) == "malformed"


def test_owner_public_key_forms() -> None:
    """PEM, base64 and hex all load; anything else is refused with the accepted forms."""
    pub = OWNER.public_key()
    raw = pub.public_bytes_raw()
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    for text in (pem, base64.b64encode(raw).decode() + "\n", raw.hex()):
        assert load_owner_public(text).public_bytes_raw() == raw
    with pytest.raises(ValueError, match="owner-key init"):
        load_owner_public("owner.pub")


class _Releases:
    """A ReleaseCheck that allows one manifest's entries."""

    def __init__(self, m: ReleaseManifest) -> None:
        self.m = m

    def refusal(self, measurement: bytes, claims: Mapping[str, str], role: str) -> str | None:
        ok = self.m.allows(measurement, bytes.fromhex(claims.get(POLICY_CLAIM, "")), role)
        return None if ok else "not listed"


def test_platform_verifier_takes_the_union_of_list_and_manifest() -> None:
    """A measurement not on the fixed list passes only if the release check allows it."""
    platform = Ed25519PrivateKey.generate()
    nonce = b"n" * 32

    def quote(measurement: bytes, policy: bytes) -> Quote:
        q = Quote(
            role="party",
            service_id="party0",
            measurement=measurement,
            keys={},
            nonce=nonce,
            issued_ns=T0,
            platform_key_id="sim",
            claims={POLICY_CLAIM: policy.hex()},
        )
        return sign_quote(q, platform)

    verifier = SimulatedPlatformVerifier(
        platform_keys={"sim": platform.public_key()},
        allowed_measurements={bytes(32)},
        releases=_Releases(manifest()),
    )
    verifier.verify(quote(M, P), nonce=nonce, now_ns=T0)
    verifier.verify(quote(bytes(32), b"\0" * 32), nonce=nonce, now_ns=T0)  # on the list
    with pytest.raises(AttestationError, match="release manifest refuses it"):
        verifier.verify(quote(M, policy_digest(b"edited")), nonce=nonce, now_ns=T0)
