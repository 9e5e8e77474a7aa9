"""Sans-IO mutual Ed25519 challenge-response handshake for party and dealer links.

Three messages on a fresh connection, before any protocol data::

    server → client   HELLO  = MAGIC ‖ nonce_s(32) ‖ server_name
    client → server   AUTH   = MAGIC ‖ nonce_c(32) ‖ sig_c(64) ‖ client_name
    server → client   ACCEPT = MAGIC ‖ sig_s(64)

Both signatures cover ``transcript = LABEL ‖ nonce_s ‖ nonce_c ‖ len ‖ server_name
‖ len ‖ client_name`` plus a role suffix, so each side proves possession of its
key over fresh nonces from both sides, and neither signature can be replayed
to another connection or reflected in the other role. Names are identities such
as ``party-0`` or ``dealer``; keys come from the caller (the cluster services
may pass their enclave keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_tecc.mpc.errors import AuthenticationError

MAGIC: Final = b"TMH1"
LABEL: Final = b"tecc-mpc-handshake/v1"
NONCE: Final = 32
SIG: Final = 64


def party_name(index: int) -> str:
    """The handshake identity of compute party ``index``."""
    return f"party-{index}"


DEALER_NAME: Final = "dealer"


def _transcript(nonce_s: bytes, nonce_c: bytes, server: str, client: str) -> bytes:
    s, c = server.encode(), client.encode()
    return LABEL + nonce_s + nonce_c + bytes([len(s)]) + s + bytes([len(c)]) + c


def _strip(msg: bytes, min_len: int, what: str) -> bytes:
    if len(msg) < len(MAGIC) + min_len or not msg.startswith(MAGIC):
        raise AuthenticationError(f"malformed handshake {what}: is the peer a tecc-mpc endpoint?")
    return msg[len(MAGIC) :]


def hello(server_name: str, nonce_s: bytes) -> bytes:
    """The server's first message."""
    return MAGIC + nonce_s + server_name.encode()


@dataclass(frozen=True, slots=True)
class ClientState:
    """What the client keeps between AUTH and ACCEPT."""

    transcript: bytes
    server_name: str


def client_auth(
    hello_msg: bytes,
    *,
    name: str,
    key: Ed25519PrivateKey,
    expected_server: str,
    nonce_c: bytes,
) -> tuple[bytes, ClientState]:
    """Answer HELLO: check the server's claimed name and sign the transcript."""
    body = _strip(hello_msg, NONCE + 1, "hello")
    nonce_s, server = body[:NONCE], body[NONCE:].decode(errors="replace")
    if server != expected_server:
        raise AuthenticationError(f"connected to {server!r}, expected {expected_server!r}")
    transcript = _transcript(nonce_s, nonce_c, server, name)
    sig = key.sign(transcript + b"/client")
    return MAGIC + nonce_c + sig + name.encode(), ClientState(transcript, server)


def server_accept(
    auth_msg: bytes,
    *,
    name: str,
    key: Ed25519PrivateKey,
    nonce_s: bytes,
    known: Mapping[str, Ed25519PublicKey],
) -> tuple[str, bytes]:
    """Verify AUTH against the known client keys; return (client name, ACCEPT)."""
    body = _strip(auth_msg, NONCE + SIG + 1, "auth")
    nonce_c, sig, client = (
        body[:NONCE],
        body[NONCE : NONCE + SIG],
        body[NONCE + SIG :].decode(errors="replace"),
    )
    pub = known.get(client)
    if pub is None:
        raise AuthenticationError(f"unknown peer {client!r}: add its public key to the config")
    transcript = _transcript(nonce_s, nonce_c, name, client)
    try:
        pub.verify(sig, transcript + b"/client")
    except InvalidSignature as exc:
        raise AuthenticationError(f"peer {client!r} failed the key check (wrong key?)") from exc
    return client, MAGIC + key.sign(transcript + b"/server")


def client_finish(accept_msg: bytes, state: ClientState, server_key: Ed25519PublicKey) -> None:
    """Verify the server's ACCEPT signature."""
    body = _strip(accept_msg, SIG, "accept")
    try:
        server_key.verify(body[:SIG], state.transcript + b"/server")
    except InvalidSignature as exc:
        raise AuthenticationError(
            f"{state.server_name!r} failed the key check (wrong key?)"
        ) from exc
