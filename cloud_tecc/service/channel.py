"""Authenticated, confidential messages between attested services.

A sender signs ``LABEL ‖ purpose ‖ ciphertext`` with its enclave Ed25519 key
and encrypts the body with HPKE to the recipient's attested key
(``info = LABEL ‖ purpose``). The recipient checks the signature against the
sender's attested ``sign`` key before it decrypts. Both keys come from
verified quotes, so only the approved build on each side can take part.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_tecc.errors import PeerError
from tecc_contract.attestation import VerifiedIdentity
from tecc_contract.errors import ContractError
from tecc_contract.keys import HpkePrivateKey, KemSuite, ed25519_public_from_bytes, load_public_key

LABEL: Final = b"tecc-service-msg/v1/"


def seal_message(
    body: bytes,
    *,
    purpose: str,
    sender_id: str,
    sign_key: Ed25519PrivateKey,
    recipient: VerifiedIdentity,
) -> dict[str, Any]:
    """Encrypt to ``recipient`` and sign; returns a JSON-ready envelope."""
    info = LABEL + purpose.encode()
    suite = KemSuite(recipient.hpke_suite)
    ct = suite.hpke_suite().encrypt(body, load_public_key(suite, recipient.keys["hpke"]), info=info)
    sig = sign_key.sign(info + ct)
    return {
        "sender": sender_id,
        "purpose": purpose,
        "ct": base64.b64encode(ct).decode(),
        "sig": base64.b64encode(sig).decode(),
    }


def sender_of(envelope: Any) -> str:
    """The claimed sender id of an envelope (to look up its attested identity)."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("sender"), str):
        raise PeerError("message envelope must be a JSON object with a sender")
    return str(envelope["sender"])


def open_message(
    envelope: Any,
    *,
    purpose: str,
    sender: VerifiedIdentity,
    suite: KemSuite,
    private_key: HpkePrivateKey,
) -> bytes:
    """Verify the sender's signature, then decrypt; :class:`PeerError` on any fault."""
    try:
        if envelope.get("purpose") != purpose:
            raise PeerError(f"message purpose {envelope.get('purpose')!r}, expected {purpose!r}")
        ct = base64.b64decode(envelope["ct"], validate=True)
        sig = base64.b64decode(envelope["sig"], validate=True)
        info = LABEL + purpose.encode()
        ed25519_public_from_bytes(sender.keys["sign"]).verify(sig, info + ct)
        return suite.hpke_suite().decrypt(ct, private_key, info=info)
    except PeerError:
        raise
    except (KeyError, TypeError, AttributeError, binascii.Error, ValueError) as exc:
        raise PeerError(f"malformed message envelope: {exc}") from exc
    except InvalidSignature as exc:
        raise PeerError(f"signature of {sender.service_id!r} does not verify") from exc
    except (InvalidTag, ContractError) as exc:
        raise PeerError("message does not decrypt with this service's key") from exc


def dumps(doc: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(doc, separators=(",", ":")).encode()
