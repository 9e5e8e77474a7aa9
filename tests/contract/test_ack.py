"""Delivery acknowledgements: a pinned vector, round trip, tampering, malformed bytes."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tecc_contract.ack import Ack, Outcome, decode_ack, frame_digest, seal_ack, verify_ack
from tecc_contract.errors import FrameError, SignatureError, VersionError

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"ack-vector-key").digest())
ACK = Ack("gw-1", "party0", 7, frame_digest(b"frame"), Outcome.DUPLICATE)
#: seal_ack(ACK, KEY): Ed25519 is deterministic, so the bytes are fixed.
VECTOR = bytes.fromhex(
    "5441434b010467772d310670617274793007000000000000009dff50df08c635815f4b19da10f756605a"
    "34a79a48d4ba48712782502975a70e02b6f5a159649e7ba79e717904f8b3469387cbe4f028e9e5144d43"
    "07340fa717437d19774c9309c5eacf5690db92b28bc035ab1293036513c8c9e0292eccadf80c"
)


def _verify(
    data: bytes,
    *,
    gateway_id: str = "gw-1",
    cluster_id: str = "party0",
    seq: int = 7,
    frame: bytes = b"frame",
) -> Ack:
    return verify_ack(
        data, KEY.public_key(), gateway_id=gateway_id, cluster_id=cluster_id, seq=seq, frame=frame
    )


def test_vector_encodes_and_verifies() -> None:
    """The layout is pinned: magic, version, ids, seq, SHA-256(frame), outcome, signature."""
    assert seal_ack(ACK, KEY) == VECTOR
    assert _verify(VECTOR) == ACK
    assert decode_ack(VECTOR)[0] == ACK


def test_every_flipped_bit_is_refused() -> None:
    """No byte of an acknowledgement can change without verification failing."""
    for i in range(len(VECTOR)):
        bad = bytearray(VECTOR)
        bad[i] ^= 0x01
        with pytest.raises((FrameError, SignatureError)):
            _verify(bytes(bad))


def test_ack_of_something_else_is_refused() -> None:
    """Another key, gateway, cluster, seq or frame content: never this frame's ack."""
    with pytest.raises(SignatureError, match="attested key"):
        verify_ack(
            VECTOR,
            Ed25519PrivateKey.generate().public_key(),
            gateway_id="gw-1",
            cluster_id="party0",
            seq=7,
            frame=b"frame",
        )
    with pytest.raises(FrameError, match="expected 'gw-2'"):
        _verify(VECTOR, gateway_id="gw-2")
    with pytest.raises(FrameError, match="expected 'gw-1', 'p1'"):
        _verify(VECTOR, cluster_id="p1")
    with pytest.raises(FrameError, match="seq 8"):
        _verify(VECTOR, seq=8)
    with pytest.raises(FrameError, match="expected"):
        _verify(VECTOR, frame=b"frame!")


def test_malformed_acks() -> None:
    """Truncated, oversized, other magic, other version or outcome: clear FrameErrors."""
    with pytest.raises(FrameError, match="truncated"):
        decode_ack(VECTOR[:40])
    with pytest.raises(FrameError, match="exceeds"):
        decode_ack(VECTOR + bytes(1000))
    with pytest.raises(FrameError, match="magic"):
        decode_ack(b"TPRG" + VECTOR[4:])
    with pytest.raises(VersionError):
        decode_ack(VECTOR[:4] + b"\x02" + VECTOR[5:])
    body = VECTOR[:-65] + b"\x03"
    with pytest.raises(FrameError, match="outcome 3"):
        decode_ack(body + KEY.sign(body))
    with pytest.raises(FrameError, match="digest"):
        Ack("gw", "p", 1, b"short", Outcome.STORED)
    with pytest.raises(FrameError, match="empty"):
        Ack("", "p", 1, bytes(32), Outcome.STORED)
