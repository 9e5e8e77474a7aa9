"""Progress notices: round trip, signature, addressing fields, freshness, malformed bytes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tecc_contract.errors import FrameError, SignatureError, VersionError
from tecc_contract.progress import (
    MAX_AGE_NS,
    MAX_AHEAD_NS,
    Progress,
    check_fresh,
    open_progress,
    seal_progress,
)

NOW = 1_800_000_000_000_000_000


def test_round_trip_and_signature() -> None:
    """A sealed notice opens to itself; a flipped bit or another key does not."""
    gw, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    p = Progress("gw-1", "party0", NOW - 5, NOW)
    frame = seal_progress(p, gw)
    assert open_progress(frame, {"gw-1": gw.public_key()}) == p
    for i in (0, 6, len(frame) - 70, len(frame) - 1):
        bad = bytearray(frame)
        bad[i] ^= 0x01
        with pytest.raises((FrameError, SignatureError)):
            open_progress(bytes(bad), {"gw-1": gw.public_key()})
    with pytest.raises(SignatureError, match="signature"):
        open_progress(frame, {"gw-1": other.public_key()})
    with pytest.raises(SignatureError, match="not enrolled"):
        open_progress(frame, {"gw-2": gw.public_key()})


def test_malformed_and_impossible_notices() -> None:
    """Truncated, versioned, oversized and through > sent notices are refused clearly."""
    gw = Ed25519PrivateKey.generate()
    keys = {"gw-1": gw.public_key()}
    frame = seal_progress(Progress("gw-1", "party0", NOW, NOW), gw)
    with pytest.raises(FrameError, match="truncated"):
        open_progress(frame[:20], keys)
    with pytest.raises(VersionError):
        open_progress(frame[:4] + b"\x02" + frame[5:], keys)
    with pytest.raises(FrameError, match="exceeds"):
        open_progress(frame + bytes(1000), keys)
    with pytest.raises(FrameError, match="through_ns"):
        Progress("gw-1", "party0", NOW + 1, NOW)
    with pytest.raises(FrameError, match="empty"):
        Progress("", "party0", 0, NOW)


def test_freshness_window() -> None:
    """Sent within the last minute or up to 10 s ahead: accepted; otherwise refused."""
    check_fresh(Progress("g", "c", 0, NOW - MAX_AGE_NS), NOW)
    check_fresh(Progress("g", "c", 0, NOW + 10**10), NOW)
    with pytest.raises(FrameError, match="stale"):
        check_fresh(Progress("g", "c", 0, NOW - MAX_AGE_NS - 1), NOW)
    with pytest.raises(FrameError, match="skew"):
        check_fresh(Progress("g", "c", 0, NOW + 10**10 + 1), NOW)


def test_gateway_a_cannot_sign_as_gateway_b() -> None:
    """With several gateways enrolled, a notice naming B signed by A's key is refused.

    Kills the mutant that accepts a signature by any enrolled gateway key.
    """
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = {"gw-a": a.public_key(), "gw-b": b.public_key()}
    p = Progress("gw-b", "party0", NOW - 5, NOW)
    assert open_progress(seal_progress(p, b), keys) == p
    with pytest.raises(SignatureError, match="'gw-b'"):
        open_progress(seal_progress(p, a), keys)
    assert open_progress(seal_progress(Progress("gw-a", "party0", 0, NOW), a), keys).gateway_id == (
        "gw-a"
    )


def test_freshness_boundaries_exact() -> None:
    """The freshness bounds are inclusive to the nanosecond on both sides."""
    check_fresh(Progress("g", "c", 0, NOW + MAX_AHEAD_NS), NOW)
    with pytest.raises(FrameError):
        check_fresh(Progress("g", "c", 0, NOW + MAX_AHEAD_NS + 1), NOW)
    check_fresh(Progress("g", "c", 0, NOW - MAX_AGE_NS), NOW)
    with pytest.raises(FrameError):
        check_fresh(Progress("g", "c", 0, NOW - MAX_AGE_NS - 1), NOW)
