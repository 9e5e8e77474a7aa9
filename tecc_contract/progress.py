"""Progress notices: a gateway's signed low watermark towards one cluster.

A cluster cannot tell from the batches alone whether a gateway still holds
readings for a window: a batch may sit in the gateway's spool while the link
is down, or its MQTT broker may still be holding messages for it. So every
gateway tells each cluster, a few times a second, up to which timestamp it
has delivered *everything*::

    through_ns: every reading with a timestamp below this that the gateway has
                accepted or will still accept has been acknowledged by this
                cluster (0 = no claim; the notice only says "alive").

A cluster closes a window once every live gateway's notice has passed its
end (``docs/CLOUD.md``). Readings a gateway accepts later with an older
timestamp are *late*: counted on both sides, never analysed.

Frame layout (integers little-endian)::

    magic "TPRG" | u8 version (1) | u8 len + gateway id | u8 len + cluster id
    | i64 through_ns | i64 sent_ns | Ed25519 signature (64) over all bytes before it

The notice carries no value. It is bound to one cluster (a notice replayed
to another cluster is refused) and the cluster keeps the maximum per gateway,
so a replayed notice can never move a watermark backwards; ``sent_ns`` lets
the receiver refuse stale or future-dated ones (:func:`check_fresh`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tecc_contract.errors import FrameError, SignatureError
from tecc_contract.wire import Writer, open_signed

MAGIC: Final = b"TPRG"
VERSION: Final = 1
SIG_BYTES: Final = 64
MAX_BYTES: Final = 4 + 1 + 256 + 256 + 16 + SIG_BYTES
MAX_AGE_NS: Final = 60 * 10**9
MAX_AHEAD_NS: Final = 10 * 10**9


@dataclass(frozen=True, slots=True)
class Progress:
    """One gateway's delivered-through timestamp towards one cluster."""

    gateway_id: str
    cluster_id: str
    through_ns: int
    sent_ns: int

    def __post_init__(self) -> None:
        if not self.gateway_id or not self.cluster_id:
            raise FrameError("progress notice: empty gateway or cluster id")
        if not 0 <= self.through_ns <= self.sent_ns < 2**63:
            raise FrameError(
                f"progress notice: need 0 <= through_ns ({self.through_ns}) <= sent_ns "
                f"({self.sent_ns}) < 2^63"
            )


def seal_progress(p: Progress, key: Ed25519PrivateKey) -> bytes:
    """Encode and sign a notice (gateway side)."""
    w = Writer()
    w.raw(MAGIC)
    w.u8(VERSION)
    w.short_str(p.gateway_id)
    w.short_str(p.cluster_id)
    w.i64(p.through_ns)
    w.i64(p.sent_ns)
    body = w.getvalue()
    return body + key.sign(body)


def open_progress(frame: bytes, gateway_keys: Mapping[str, Ed25519PublicKey]) -> Progress:
    """Parse and verify a notice; :class:`FrameError` or :class:`SignatureError` otherwise."""
    r, body, sig = open_signed(
        frame,
        magic=MAGIC,
        version=VERSION,
        what="progress notice",
        article="a",
        max_bytes=MAX_BYTES,
    )
    gateway = r.short_str("gateway id")
    cluster = r.short_str("cluster id")
    through, sent = r.i64("through_ns"), r.i64("sent_ns")
    r.expect_end()
    p = Progress(gateway, cluster, through, sent)
    key = gateway_keys.get(gateway)
    if key is None:
        raise SignatureError(f"progress notice from gateway {gateway!r}, which is not enrolled")
    try:
        key.verify(sig, body)
    except InvalidSignature as exc:
        raise SignatureError(f"signature of gateway {gateway!r} on a progress notice") from exc
    return p


def check_fresh(p: Progress, now_ns: int) -> None:
    """Refuse a notice sent more than a minute ago or dated ahead of ``now_ns``."""
    if p.sent_ns < now_ns - MAX_AGE_NS or p.sent_ns > now_ns + MAX_AHEAD_NS:
        raise FrameError(
            f"progress notice of {p.gateway_id!r} is dated {(p.sent_ns - now_ns) / 1e9:+.1f} s "
            "from now (stale or clock skew)"
        )
