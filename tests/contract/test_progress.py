"""Progress notices: round trip, signature, addressing fields, freshness, malformed bytes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tecc_contract.errors import FrameError, SignatureError, VersionError
from tecc_contract.progress import (
    MAX_AGE_NS,
    MAX_AHEAD_NS,
    MAX_BYTES,
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


def test_documented_limits() -> None:
    """A notice is at most 597 bytes (two 255-byte ids); fresh means 60 s back, 10 s ahead.

    Sealer and opener share these constants, so only fixed expectations catch an edit.
    """
    assert MAX_BYTES == 4 + 1 + 256 + 256 + 16 + 64 == 597
    assert (MAX_AGE_NS, MAX_AHEAD_NS) == (60 * 10**9, 10 * 10**9)


def test_largest_notice_opens_and_one_byte_more_is_refused() -> None:
    """Two 255-character ids give exactly MAX_BYTES, which opens; 598 bytes exceed."""
    gw = Ed25519PrivateKey.generate()
    gid, cid = "g" * 255, "c" * 255
    frame = seal_progress(Progress(gid, cid, NOW, NOW), gw)
    assert len(frame) == 597
    assert open_progress(frame, {gid: gw.public_key()}).cluster_id == cid
    with pytest.raises(FrameError, match="exceeds"):
        open_progress(frame + b"\x00", {gid: gw.public_key()})


def test_sent_ns_must_fit_a_signed_64_bit_integer() -> None:
    """sent_ns = 2^63 − 1 is valid, 2^63 is not (the wire field is an i64)."""
    assert Progress("g", "c", 0, 2**63 - 1).sent_ns == 2**63 - 1
    with pytest.raises(FrameError, match="2\\^63"):
        Progress("g", "c", 0, 2**63)


def test_short_foreign_and_padded_notices_are_refused() -> None:
    """68 bytes (magic + signature) is the floor; other magic and trailing bytes are refused.

    The padded notice is re-signed by the gateway key, so only the parser can refuse it.
    """
    gw = Ed25519PrivateKey.generate()
    keys = {"gw-1": gw.public_key()}
    frame = seal_progress(Progress("gw-1", "party0", NOW, NOW), gw)
    body = frame[:-64]
    with pytest.raises(FrameError, match=r"^progress notice truncated$"):
        open_progress(frame[: 4 + 64 - 1], keys)  # the length check, not the reader
    with pytest.raises(FrameError, match="version needs 1 bytes"):
        open_progress(frame[:4] + bytes(64), keys)  # long enough: refused by the reader
    other = b"TECC" + body[4:]
    with pytest.raises(FrameError, match="bad magic"):
        open_progress(other + gw.sign(other), keys)
    padded = body + b"\x00"
    with pytest.raises(FrameError):
        open_progress(padded + gw.sign(padded), keys)
