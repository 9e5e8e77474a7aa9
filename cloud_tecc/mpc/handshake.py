"""Sans-IO authenticated key exchange for party and dealer links, and the channel it keys.

Three messages on a fresh connection, before any protocol data::

    server → client   HELLO  = MAGIC ‖ nonce_s(32) ‖ eph_s(32) ‖ server_name
    client → server   AUTH   = MAGIC ‖ nonce_c(32) ‖ eph_c(32) ‖ sig_c(64) ‖ client_name
    server → client   ACCEPT = MAGIC ‖ sig_s(64)

Both signatures (Ed25519, the attested identity keys) cover ``transcript =
LABEL ‖ nonce_s ‖ nonce_c ‖ eph_s ‖ eph_c ‖ len ‖ server_name ‖ len ‖
client_name`` plus a role suffix, so each side proves possession of its key
over fresh nonces and ephemeral keys from both sides, and neither signature
can be replayed to another connection or reflected in the other role. Names
are identities such as ``party-0`` or ``dealer``.

``eph_s``/``eph_c`` are ephemeral X25519 public keys. Their shared secret,
through HKDF-SHA256 (salt = SHA-256 of the transcript), keys a
:class:`Channel`: AES-256-GCM with one key per direction and the frame
counter as nonce, so every later frame is confidential, authenticated and in
order (a dropped, replayed, reordered or modified frame fails to open). This
matters because the party mesh carries masked openings and the dealer links
carry the masks: an observer of both could otherwise combine them. Forward
secrecy comes from the ephemeral keys.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloud_tecc.mpc.errors import AuthenticationError

MAGIC: Final = b"TMH2"
LABEL: Final = b"tecc-mpc-handshake/v2"
NONCE: Final = 32
EPH: Final = 32
SIG: Final = 64
_GCM_NONCE: Final = struct.Struct("<4xQ")


class Channel:
    """AES-256-GCM in both directions, nonce = per-direction frame counter."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._tx, self._rx = AESGCM(send_key), AESGCM(recv_key)
        self._n_tx = self._n_rx = 0

    def seal(self, data: bytes | memoryview) -> bytes:
        """Encrypt the next outgoing frame."""
        nonce = _GCM_NONCE.pack(self._n_tx)
        self._n_tx += 1
        return self._tx.encrypt(nonce, data, None)

    def open(self, data: bytes) -> bytes:
        """Decrypt the next incoming frame; :class:`AuthenticationError` if it is not."""
        try:
            out = self._rx.decrypt(_GCM_NONCE.pack(self._n_rx), data, None)
        except (InvalidTag, ValueError) as exc:
            raise AuthenticationError(
                "a frame failed authentication: modified, replayed, reordered or dropped"
            ) from exc
        self._n_rx += 1
        return out


def _channel(eph: X25519PrivateKey, peer_eph: bytes, transcript: bytes, *, server: bool) -> Channel:
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(peer_eph))
    except ValueError as exc:
        raise AuthenticationError("the peer's ephemeral key is invalid") from exc
    keys = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=hashlib.sha256(transcript).digest(),
        info=LABEL + b"/channel",
    ).derive(shared)
    s2c, c2s = keys[:32], keys[32:]
    return Channel(s2c, c2s) if server else Channel(c2s, s2c)


def _eph_bytes(eph: X25519PrivateKey) -> bytes:
    return eph.public_key().public_bytes_raw()


def party_name(index: int) -> str:
    """The handshake identity of compute party ``index``."""
    return f"party-{index}"


DEALER_NAME: Final = "dealer"


def _transcript(nonces: bytes, ephs: bytes, server: str, client: str) -> bytes:
    """``nonces`` = nonce_s ‖ nonce_c, ``ephs`` = eph_s ‖ eph_c."""
    s, c = server.encode()[:255], client.encode()[:255]
    return LABEL + nonces + ephs + bytes([len(s)]) + s + bytes([len(c)]) + c


def _strip(msg: bytes, min_len: int, what: str) -> bytes:
    if len(msg) < len(MAGIC) + min_len or not msg.startswith(MAGIC):
        raise AuthenticationError(f"malformed handshake {what}: is the peer a tecc-mpc endpoint?")
    return msg[len(MAGIC) :]


def hello(server_name: str, nonce_s: bytes, eph: X25519PrivateKey) -> bytes:
    """The server's first message."""
    return MAGIC + nonce_s + _eph_bytes(eph) + server_name.encode()


@dataclass(frozen=True, slots=True)
class ClientState:
    """What the client keeps between AUTH and ACCEPT."""

    transcript: bytes
    server_name: str
    eph: X25519PrivateKey
    server_eph: bytes


def client_auth(
    hello_msg: bytes,
    *,
    name: str,
    key: Ed25519PrivateKey,
    expected_server: str,
    nonce_c: bytes,
    eph: X25519PrivateKey,
) -> tuple[bytes, ClientState]:
    """Answer HELLO: check the server's claimed name and sign the transcript."""
    body = _strip(hello_msg, NONCE + EPH + 1, "hello")
    nonce_s, eph_s = body[:NONCE], body[NONCE : NONCE + EPH]
    server = body[NONCE + EPH :].decode(errors="replace")
    if server != expected_server:
        raise AuthenticationError(f"connected to {server!r}, expected {expected_server!r}")
    eph_c = _eph_bytes(eph)
    transcript = _transcript(nonce_s + nonce_c, eph_s + eph_c, server, name)
    sig = key.sign(transcript + b"/client")
    return MAGIC + nonce_c + eph_c + sig + name.encode(), ClientState(
        transcript, server, eph, eph_s
    )


def server_accept(
    auth_msg: bytes,
    *,
    name: str,
    key: Ed25519PrivateKey,
    nonce_s: bytes,
    eph: X25519PrivateKey,
    known: Mapping[str, Ed25519PublicKey],
) -> tuple[str, bytes, Channel]:
    """Verify AUTH against the known client keys; return (client name, ACCEPT, channel)."""
    body = _strip(auth_msg, NONCE + EPH + SIG + 1, "auth")
    nonce_c, eph_c = body[:NONCE], body[NONCE : NONCE + EPH]
    sig = body[NONCE + EPH : NONCE + EPH + SIG]
    client = body[NONCE + EPH + SIG :].decode(errors="replace")
    pub = known.get(client)
    if pub is None:
        raise AuthenticationError(f"unknown peer {client!r}: add its public key to the config")
    transcript = _transcript(nonce_s + nonce_c, _eph_bytes(eph) + eph_c, name, client)
    try:
        pub.verify(sig, transcript + b"/client")
    except InvalidSignature as exc:
        raise AuthenticationError(f"peer {client!r} failed the key check (wrong key?)") from exc
    channel = _channel(eph, eph_c, transcript, server=True)
    return client, MAGIC + key.sign(transcript + b"/server"), channel


def client_finish(accept_msg: bytes, state: ClientState, server_key: Ed25519PublicKey) -> Channel:
    """Verify the server's ACCEPT signature; return the keyed channel."""
    body = _strip(accept_msg, SIG, "accept")
    try:
        server_key.verify(body[:SIG], state.transcript + b"/server")
    except InvalidSignature as exc:
        raise AuthenticationError(
            f"{state.server_name!r} failed the key check (wrong key?)"
        ) from exc
    return _channel(state.eph, state.server_eph, state.transcript, server=False)
