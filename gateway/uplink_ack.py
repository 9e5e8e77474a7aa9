"""What a cluster's answer to ``POST /v1/batches`` means for the spooled frame (sans-IO).

A frame leaves the spool only on :attr:`Answer.ACKED`: a 2xx answer whose
``ack`` is a delivery acknowledgement (:mod:`tecc_contract.ack`) of this
gateway's seq and this exact frame's digest, signed by the ``sign`` key the
cluster's verified quote binds.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.uplink_endpoints import retry_after_s
from tecc_contract.ack import verify_ack
from tecc_contract.errors import ContractError

#: Statuses that, with ``Retry-After``, mean "overloaded, come back then" (not a failure).
OVERLOAD_STATUSES = frozenset({429, 503})


def overload_wait_s(status: int, headers: Mapping[str, str], now_s: float) -> float | None:
    """The wait an overloaded endpoint asks for (``503``/``429`` + ``Retry-After``), else None.

    A 503 without a usable ``Retry-After`` is an ordinary failure (backoff).
    ``now_s``: Unix time, for a ``Retry-After`` given as an HTTP-date.
    """
    if status not in OVERLOAD_STATUSES:
        return None
    return retry_after_s(headers.get("Retry-After"), now_s)


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, or its first ``cap`` bytes (an answer is never that long)."""
    chunks: list[bytes] = []
    left = cap
    while left > 0:
        chunk = await resp.content.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Answer(enum.Enum):
    """What a cluster's answer to ``POST /v1/batches`` means for the spooled frame."""

    ACKED = "acked"  # a valid signed acknowledgement of this exact frame: delete it
    CONFLICT = "conflict"  # 409 replay: the cluster holds other bytes under this seq
    REFUSED = "refused"  # any other non-2xx status
    BAD_ACK = "bad_ack"  # 2xx without a valid acknowledgement of this frame


@dataclass(frozen=True, slots=True, kw_only=True)
class AckCheck:
    """Who must have acknowledged what: the identities and key of one batch upload."""

    gateway_id: str
    cluster_id: str
    key: Ed25519PublicKey


def _reason(body: bytes) -> object:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("reason") if isinstance(doc, dict) else None


def judge_answer(
    status: int, body: bytes, *, check: AckCheck, seq: int, frame: bytes
) -> tuple[Answer, str]:
    """Classify an answer to ``POST /v1/batches`` (sans-IO); the str says why.

    Only :attr:`Answer.ACKED` lets the frame go. The body of a 2xx answer is
    JSON with ``"ack"``: the base64 of a :mod:`tecc_contract.ack` message.
    """
    if status == 409 and _reason(body) == "replay":
        return Answer.CONFLICT, f"409: {body[:200]!r}"
    if not 200 <= status < 300:
        return Answer.REFUSED, f"{status}: {body[:200]!r}"
    try:
        doc = json.loads(body)
        raw = base64.b64decode(doc["ack"], validate=True)
        verify_ack(
            raw,
            check.key,
            gateway_id=check.gateway_id,
            cluster_id=check.cluster_id,
            seq=seq,
            frame=frame,
        )
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        return Answer.BAD_ACK, f"{status} without a signed acknowledgement ({exc!r:.120})"
    except ContractError as exc:
        return Answer.BAD_ACK, f"{status} with an invalid acknowledgement: {exc}"
    return Answer.ACKED, ""
