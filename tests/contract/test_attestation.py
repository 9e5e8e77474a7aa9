"""The simulated quote format and its verifier."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tecc_contract.attestation import Quote, SimulatedPlatformVerifier, sign_quote
from tecc_contract.errors import AttestationError
from tests.contract.helpers import ed25519_from_seed

PLATFORM = ed25519_from_seed(b"platform")
GOOD = bytes(range(32))
NOW = 1_800_000_000_000_000_000


def _quote(**kw: object) -> Quote:
    base: dict[str, object] = {
        "role": "party",
        "service_id": "cluster-0",
        "measurement": GOOD,
        "keys": {"hpke": b"k" * 32, "sign": b"s" * 32},
        "nonce": b"n" * 16,
        "issued_ns": NOW,
        "platform_key_id": "sim-platform",
    }
    base.update(kw)
    return sign_quote(Quote(**base), PLATFORM)  # type: ignore[arg-type]


def _verifier() -> SimulatedPlatformVerifier:
    return SimulatedPlatformVerifier(
        platform_keys={"sim-platform": PLATFORM.public_key()}, allowed_measurements={GOOD}
    )


def test_valid_quote_round_trips_json_and_verifies() -> None:
    """A quote survives JSON and proves the keys it carries."""
    q = Quote.from_bytes(json.dumps(_quote().to_json()).encode())
    ident = _verifier().verify(q, nonce=b"n" * 16, now_ns=NOW + 10**9, role="party")
    assert ident.keys["hpke"] == b"k" * 32
    assert ident.measurement == GOOD


@pytest.mark.parametrize(
    ("quote", "nonce", "now", "role", "match"),
    [
        (_quote(measurement=b"\x01" * 32), b"n" * 16, NOW, None, "allow-list"),
        (_quote(), b"other", NOW, None, "nonce"),
        (_quote(), b"n" * 16, NOW + 3600 * 10**9, None, "stale"),
        (_quote(), b"n" * 16, NOW, "dealer", "need dealer"),
        (_quote(platform_key_id="evil"), b"n" * 16, NOW, None, "unknown platform"),
    ],
)
def test_rejections(quote: Quote, nonce: bytes, now: int, role: str | None, match: str) -> None:
    """Unlisted build, replayed nonce, stale quote, wrong role, unknown platform."""
    with pytest.raises(AttestationError, match=match):
        _verifier().verify(quote, nonce=nonce, now_ns=now, role=role)


def test_edited_quote_fails_signature() -> None:
    """Swapping the keys in a signed quote breaks the platform signature."""
    forged = replace(_quote(), keys={"hpke": b"m" * 32})
    with pytest.raises(AttestationError, match="invalid platform signature"):
        _verifier().verify(forged, nonce=b"n" * 16, now_ns=NOW)


def test_self_signed_quote_fails() -> None:
    """A quote signed by a key that is not the platform's is refused."""
    q = sign_quote(replace(_quote(), signature=b""), ed25519_from_seed(b"mallory"))
    with pytest.raises(AttestationError):
        _verifier().verify(q, nonce=b"n" * 16, now_ns=NOW)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_from_json_raises_only_attestation_errors(obj: object) -> None:
    """Arbitrary JSON values are rejected with AttestationError, never another exception."""
    with pytest.raises(AttestationError):
        Quote.from_json(obj)


@given(st.binary(max_size=200))
def test_from_bytes_hostile(data: bytes) -> None:
    """Arbitrary bytes are rejected with AttestationError."""
    with pytest.raises(AttestationError):
        Quote.from_bytes(data)


def test_every_field_mutation_is_refused() -> None:
    """Each field of a valid quote replaced by junk fails parsing or verification."""
    good = _quote().to_json()
    for key in good:
        junks: tuple[object, ...] = (None, 5, "zz", [], {"a": 1})
        for junk in junks:
            try:
                q = Quote.from_json({**good, key: junk})
            except AttestationError:
                continue
            with pytest.raises(AttestationError):
                _verifier().verify(q, nonce=b"n" * 16, now_ns=NOW)
