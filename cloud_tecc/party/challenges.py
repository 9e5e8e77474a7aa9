"""Where a party keeps its outstanding enrolment and re-quote nonces: one interface, two backends.

:class:`LocalChallenges` keeps them in this process's memory (the all-in-one
party: the gateway finishes at the process that issued the nonce);
:class:`cloud_tecc.jetstream.enrolkv.KvChallenges` keeps them in the party's
JetStream KV with a TTL, so a challenge issued by one ingest frontend can be
finished at any other, and a nonce is single use party-wide.

Either way the store never hands the credential's plaintext secret back: a
consumed :class:`~tecc_contract.tpm_evidence.Challenge` carries
``secret = SHA-256(secret)`` (:func:`secret_digest`), and the caller compares
that with the digest of what the gateway activated. So the KV (readable by
whoever runs the party's NATS nodes) never holds a secret that would let its
reader skip the credential activation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from tecc_contract import tpm_evidence as ev


@dataclass(frozen=True, slots=True)
class EnrolContext:
    """What the second enrolment step needs from the first (all public, serialisable)."""

    identity_key: bytes
    ek_fingerprint: str
    ak_public: bytes


def secret_digest(secret: bytes) -> bytes:
    """SHA-256 of a credential secret: what a challenge store keeps and returns."""
    return hashlib.sha256(secret).digest()


class ChallengeStore(Protocol):
    """Issue and consume single-use nonces (``nonce`` refusal when unknown, used or expired)."""

    async def issue(
        self, gateway_id: str, purpose: bytes, now_ns: int, context: EnrolContext | None = None
    ) -> ev.Challenge:
        """A fresh challenge for ``gateway_id`` (its ``secret`` in clear, once)."""
        ...

    async def consume(
        self, nonce: bytes, gateway_id: str, purpose: bytes, now_ns: int
    ) -> ev.Challenge:
        """The challenge of ``nonce``, removed everywhere; its ``secret`` is the digest."""
        ...


class LocalChallenges:
    """Nonces in this process (:class:`tecc_contract.tpm_evidence.Challenges`)."""

    def __init__(self, *, ttl_ns: int, limit: int, random: Callable[[int], bytes]) -> None:
        self.open = ev.Challenges(ttl_ns=ttl_ns, limit=limit, random=random)

    def __len__(self) -> int:
        return len(self.open)

    async def issue(
        self, gateway_id: str, purpose: bytes, now_ns: int, context: EnrolContext | None = None
    ) -> ev.Challenge:
        """See :class:`ChallengeStore`."""
        return self.open.issue(gateway_id, purpose, now_ns, context)

    async def consume(
        self, nonce: bytes, gateway_id: str, purpose: bytes, now_ns: int
    ) -> ev.Challenge:
        """See :class:`ChallengeStore`."""
        ch = self.open.consume(nonce, gateway_id, purpose, now_ns)
        return replace(ch, secret=secret_digest(ch.secret))
