"""The output ↔ party messages of the dashboard's gateway view, and the party operator's MAC.

The output service asks every party for its gateway records and forwards an
admin's approve or revoke to one party. Both directions are sealed service
messages (:mod:`cloud_tecc.service.channel`): a party answers only the
attested output service its config names, and seals the answer to that
output's attested key. The output cannot *decide* anything at a party: an
action carries a MAC by one of **that party's operator keys**
(``state_dir/operator-keys.json``, or with ``jetstream:`` the party's KV
``tecc_operator_keys``; created by ``tecc-cluster admin operator-key add``),
computed in the admin's browser
over :func:`statement`. The output service sees the MAC, never the key: a
recorded request approves one gateway (with the identity key the operator
saw), at one party, once, within :data:`MAX_SKEW_NS`.

Purposes: :data:`LIST` (body ``{issued_ns}``), :data:`ACTION` (body
``{issued_ns, action, gateway_id, identity_key, operator, issued_ms, nonce,
mac}``), both answered with :data:`REPLY`.
"""

from __future__ import annotations

import re
from typing import Final

from cryptography.hazmat.primitives import constant_time, hashes, hmac

LIST: Final = "gateway-admin/list"
ACTION: Final = "gateway-admin/action"
REPLY: Final = "gateway-admin/reply"
ACTIONS: Final = ("approve", "revoke")
#: How far a request's ``issued_ns`` / the operator's ``issued_ms`` may be from the party's clock.
MAX_SKEW_NS: Final = 120 * 1_000_000_000
KEY_PREFIX: Final = "teccop_"
MAX_BODY: Final = 64 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class OperatorKeyError(ValueError):
    """An operator key that is not ``teccop_`` + 64 hex digits."""


def parse_key(text: str) -> bytes:
    """``teccop_<64 hex>`` → its 32 bytes; OperatorKeyError otherwise."""
    raw = text.strip().removeprefix(KEY_PREFIX)
    if not _HEX64.match(raw):
        raise OperatorKeyError(
            f"an operator key is {KEY_PREFIX!r} followed by 64 hex digits, as "
            "`tecc-cluster admin operator-key add NAME` printed it"
        )
    return bytes.fromhex(raw)


def statement(
    *,
    party: str,
    action: str,
    gateway_id: str,
    identity_key: str,
    issued_ms: int,
    nonce: str,
) -> bytes:
    """The bytes a party operator's MAC covers (the browser builds the same lines).

    ``party`` is the party's service id, ``identity_key`` the hex identity key
    of the record the operator approves ("" for a revoke of a gateway known
    only to the config), ``nonce`` 32 hex digits from the browser.
    """
    lines = ("tecc-gateway-admin/v1", party, action, gateway_id, identity_key, str(issued_ms))
    return "\n".join((*lines, nonce)).encode()


def mac(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 of ``message`` under an operator key, hex."""
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(message)
    return h.finalize().hex()


def mac_ok(key: bytes, message: bytes, claimed: str) -> bool:
    """Whether ``claimed`` is the MAC of ``message`` under ``key`` (constant time)."""
    return constant_time.bytes_eq(mac(key, message).encode(), claimed.lower().encode())
