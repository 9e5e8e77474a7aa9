"""Delivery acknowledgements: a cluster's signed statement that it holds one exact frame.

The gateway deletes a spooled frame only when its cluster says it holds it.
An HTTP status alone cannot say that: over plain HTTP an on-path attacker
answers 200 and the frame is gone (and the gateway's next progress notice
closes the window without it). So the cluster signs each acknowledgement
with its attested Ed25519 service key (the ``sign`` key its quote binds,
which the gateway verified before sending anything), over the frame's
SHA-256 digest::

    magic "TACK" | u8 version (1) | u8 len + gateway id | u8 len + cluster id
    | u64 seq | 32-byte SHA-256(frame) | u8 outcome | Ed25519 signature (64)
    over all bytes before it

``outcome`` is :attr:`Outcome.STORED` (this upload stored it) or
:attr:`Outcome.DUPLICATE` (already stored, identical bytes). A cluster that
holds *different* bytes under that seq (a replay) sends no acknowledgement.
The gateway accepts an acknowledgement only through :func:`verify_ack`:
right key, right gateway and cluster ids, right seq and the digest of the
exact frame it sent; anything else leaves the frame spooled and is retried.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tecc_contract.errors import FrameError, SignatureError
from tecc_contract.wire import Writer, open_signed

MAGIC: Final = b"TACK"
VERSION: Final = 1
DIGEST_BYTES: Final = 32
SIG_BYTES: Final = 64
MAX_BYTES: Final = 4 + 1 + 256 + 256 + 8 + DIGEST_BYTES + 1 + SIG_BYTES


class Outcome(enum.IntEnum):
    """What the cluster did with the frame."""

    STORED = 1
    DUPLICATE = 2


@dataclass(frozen=True, slots=True)
class Ack:
    """One cluster's acknowledgement of one frame of one gateway."""

    gateway_id: str
    cluster_id: str
    seq: int
    frame_digest: bytes
    outcome: Outcome

    def __post_init__(self) -> None:
        if not self.gateway_id or not self.cluster_id:
            raise FrameError("acknowledgement: empty gateway or cluster id")
        if not 0 <= self.seq < 2**64:
            raise FrameError(f"acknowledgement: seq {self.seq} is outside 0..2^64-1")
        if len(self.frame_digest) != DIGEST_BYTES:
            raise FrameError(
                f"acknowledgement: frame digest is {len(self.frame_digest)} bytes, need 32"
            )


def frame_digest(frame: bytes) -> bytes:
    """The digest an acknowledgement names: SHA-256 of the whole frame."""
    return hashlib.sha256(frame).digest()


def _body(a: Ack) -> bytes:
    w = Writer()
    w.raw(MAGIC)
    w.u8(VERSION)
    w.short_str(a.gateway_id)
    w.short_str(a.cluster_id)
    w.u64(a.seq)
    w.raw(a.frame_digest)
    w.u8(int(a.outcome))
    return w.getvalue()


def seal_ack(a: Ack, key: Ed25519PrivateKey) -> bytes:
    """Encode and sign an acknowledgement (cluster side)."""
    body = _body(a)
    return body + key.sign(body)


def decode_ack(data: bytes) -> tuple[Ack, bytes, bytes]:
    """Parse without verifying: ``(ack, signed bytes, signature)``; :class:`FrameError`."""
    r, body, sig = open_signed(
        data,
        magic=MAGIC,
        version=VERSION,
        what="acknowledgement",
        article="an",
        max_bytes=MAX_BYTES,
    )
    gateway = r.short_str("gateway id")
    cluster = r.short_str("cluster id")
    seq = r.u64("seq")
    digest = r.take(DIGEST_BYTES, "frame digest")
    raw_outcome = r.u8("outcome")
    r.expect_end()
    try:
        outcome = Outcome(raw_outcome)
    except ValueError as exc:
        raise FrameError(f"acknowledgement outcome {raw_outcome} is not 1 or 2") from exc
    return Ack(gateway, cluster, seq, digest, outcome), body, sig


def verify_ack(
    data: bytes,
    key: Ed25519PublicKey,
    *,
    gateway_id: str,
    cluster_id: str,
    seq: int,
    frame: bytes,
) -> Ack:
    """The acknowledgement of exactly this frame, signed by ``key``; raise otherwise.

    :class:`SignatureError` for a wrong signature or key, :class:`FrameError`
    for malformed bytes or an acknowledgement of another gateway, cluster,
    seq or frame content.
    """
    ack, body, sig = decode_ack(data)
    try:
        key.verify(sig, body)
    except InvalidSignature as exc:
        raise SignatureError(
            f"acknowledgement of seq {ack.seq} is not signed by cluster {cluster_id!r}'s "
            "attested key"
        ) from exc
    want = (gateway_id, cluster_id, seq, frame_digest(frame))
    got = (ack.gateway_id, ack.cluster_id, ack.seq, ack.frame_digest)
    if got != want:
        raise FrameError(
            f"acknowledgement names gateway {ack.gateway_id!r}, cluster {ack.cluster_id!r}, "
            f"seq {ack.seq} and digest {ack.frame_digest.hex()[:16]}..., expected "
            f"{gateway_id!r}, {cluster_id!r}, seq {seq} and {want[3].hex()[:16]}..."
        )
    return ack
