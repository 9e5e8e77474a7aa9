"""Sans-IO authenticated key exchange for party and dealer links, and the channel it keys.

Three messages on a fresh connection, before any protocol data::

    server → client   HELLO  = MAGIC ‖ suite(1) ‖ nonce_s(32) ‖ eph_s(32) ‖ [kem_pk] ‖ server_name
    client → server   AUTH   = MAGIC ‖ nonce_c(32) ‖ eph_c(32) ‖ [kem_ct] ‖ sig_c(64) ‖ client_name
    server → client   ACCEPT = MAGIC ‖ sig_s(64)

Both signatures (Ed25519, the attested identity keys) cover ``transcript =
LABEL ‖ suite ‖ nonce_s ‖ nonce_c ‖ eph_s ‖ kem_pk ‖ eph_c ‖ kem_ct ‖ len ‖
server_name ‖ len ‖ client_name`` plus a role suffix, so each side proves
possession of its key over fresh nonces and ephemeral keys from both sides,
and neither signature can be replayed to another connection or reflected in
the other role. Names are identities such as ``party-0`` or ``dealer``.

``eph_s``/``eph_c`` are ephemeral X25519 public keys. With the hybrid suite
(:attr:`LinkSuite.MLKEM768_X25519`, chosen with the post-quantum envelope
suite) the server also sends an ephemeral ML-KEM-768 public key ``kem_pk``
(1184 bytes) and the client answers with the encapsulation ``kem_ct`` (1088
bytes) of a second secret to it. The key material is the X25519 secret
followed by the ML-KEM secret; through HKDF-SHA256 (salt = SHA-256 of the
transcript, which holds both public values) it keys a :class:`Channel`:
AES-256-GCM with one key per direction and the frame counter as nonce, so
every later frame is confidential, authenticated and in order (a dropped,
replayed, reordered or modified frame fails to open). Recorded traffic stays
secret as long as either X25519 or ML-KEM-768 holds. This matters because the
party mesh carries masked openings and the dealer links carry the masks: an
observer of both could otherwise combine them. Forward secrecy comes from the
ephemeral keys. The suite byte is in the signed transcript, so an on-path
attacker cannot downgrade a hybrid link; a side configured for the other
suite refuses the handshake with a message naming the setting.

A frame may carry associated data (:meth:`Channel.seal` ``aad``): the link
layer uses it for its chunk flag.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloud_tecc.mpc.errors import AuthenticationError

MAGIC: Final = b"TMH3"
LABEL: Final = b"tecc-mpc-handshake/v3"
NONCE: Final = 32
EPH: Final = 32
SIG: Final = 64
KEM_PK: Final = 1184
KEM_CT: Final = 1088
#: Largest handshake message either side accepts (a hybrid HELLO is ~1.3 KB).
MAX_MESSAGE: Final = 4096
_GCM_NONCE: Final = struct.Struct("<4xQ")


class LinkSuite(enum.IntEnum):
    """The key agreement of a link: X25519 alone, or hybrid ML-KEM-768 + X25519."""

    X25519 = 0
    MLKEM768_X25519 = 1

    @property
    def label(self) -> str:
        """The config value that selects this suite (the envelope suite's name)."""
        return "x25519" if self is LinkSuite.X25519 else "mlkem768-x25519"

    @classmethod
    def from_label(cls, label: str) -> LinkSuite:
        """The suite a config value (``x25519`` or ``mlkem768-x25519``) selects."""
        for suite in cls:
            if suite.label == label:
                return suite
        raise ValueError(f"unknown link suite {label!r}: write x25519 or mlkem768-x25519")


class Channel:
    """AES-256-GCM in both directions, nonce = per-direction frame counter."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._tx, self._rx = AESGCM(send_key), AESGCM(recv_key)
        self._n_tx = self._n_rx = 0

    def seal(self, data: bytes | memoryview, aad: bytes | None = None) -> bytes:
        """Encrypt the next outgoing frame (``aad`` is authenticated, not encrypted)."""
        nonce = _GCM_NONCE.pack(self._n_tx)
        self._n_tx += 1
        return self._tx.encrypt(nonce, data, aad)

    def open(self, data: bytes | memoryview, aad: bytes | None = None) -> bytes:
        """Decrypt the next incoming frame; :class:`AuthenticationError` if it is not."""
        try:
            out = self._rx.decrypt(_GCM_NONCE.pack(self._n_rx), data, aad)
        except (InvalidTag, ValueError) as exc:
            raise AuthenticationError(
                "a frame failed authentication: modified, replayed, reordered or dropped"
            ) from exc
        self._n_rx += 1
        return out


def _channel(secret: bytes, transcript: bytes, *, server: bool) -> Channel:
    keys = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=hashlib.sha256(transcript).digest(),
        info=LABEL + b"/channel",
    ).derive(secret)
    s2c, c2s = keys[:32], keys[32:]
    return Channel(s2c, c2s) if server else Channel(c2s, s2c)


def _x25519(eph: X25519PrivateKey, peer_eph: bytes) -> bytes:
    try:
        return eph.exchange(X25519PublicKey.from_public_bytes(peer_eph))
    except ValueError as exc:
        raise AuthenticationError("the peer's ephemeral key is invalid") from exc


def _eph_bytes(eph: X25519PrivateKey) -> bytes:
    return eph.public_key().public_bytes_raw()


def party_name(index: int, session: str = "") -> str:
    """The handshake identity of compute party ``index`` (in MPC session ``session``).

    A party of K > 1 shard workers runs one session per shard, all under the
    party's one attested key: the session (:func:`shard_session`) is part of
    the name and so of the signed transcript, and worker k of one party can
    never pair with worker j != k of another (nor with shard j's dealer).
    """
    return f"party-{index}/{session}" if session else f"party-{index}"


def party_index(name: str) -> int:
    """The party index of a handshake identity made by :func:`party_name`."""
    return int(name.partition("/")[0].removeprefix("party-"))


def dealer_name(session: str = "") -> str:
    """The handshake identity of the dealer of MPC session ``session``."""
    return f"{DEALER_NAME}/{session}" if session else DEALER_NAME


def shard_session(shard: int, shards: int) -> str:
    """The session label of shard ``shard`` of ``shards`` ("" for one shard: today's names)."""
    return "" if shards == 1 else f"shard-{shard}-of-{shards}"


DEALER_NAME: Final = "dealer"


def _transcript(suite: LinkSuite, nonces: bytes, ephs: bytes, server: str, client: str) -> bytes:
    """``nonces`` = nonce_s ‖ nonce_c, ``ephs`` = eph_s ‖ kem_pk ‖ eph_c ‖ kem_ct."""
    s, c = server.encode()[:255], client.encode()[:255]
    return LABEL + bytes([suite]) + nonces + ephs + bytes([len(s)]) + s + bytes([len(c)]) + c


def _strip(msg: bytes, min_len: int, what: str) -> bytes:
    if len(msg) > MAX_MESSAGE or len(msg) < len(MAGIC) + min_len or not msg.startswith(MAGIC):
        raise AuthenticationError(f"malformed handshake {what}: is the peer a tecc-mpc endpoint?")
    return msg[len(MAGIC) :]


def hello(
    server_name: str,
    nonce_s: bytes,
    eph: X25519PrivateKey,
    kem: MLKEM768PrivateKey | None = None,
) -> bytes:
    """The server's first message (``kem`` given: the hybrid suite)."""
    if kem is None:
        return MAGIC + bytes([LinkSuite.X25519]) + nonce_s + _eph_bytes(eph) + server_name.encode()
    kem_pk = kem.public_key().public_bytes_raw()
    suite = bytes([LinkSuite.MLKEM768_X25519])
    return MAGIC + suite + nonce_s + _eph_bytes(eph) + kem_pk + server_name.encode()


@dataclass(frozen=True, slots=True)
class ClientState:
    """What the client keeps between AUTH and ACCEPT."""

    transcript: bytes
    server_name: str
    secret: bytes


def client_auth(
    hello_msg: bytes,
    *,
    name: str,
    key: Ed25519PrivateKey,
    expected_server: str,
    nonce_c: bytes,
    eph: X25519PrivateKey,
    suite: LinkSuite = LinkSuite.X25519,
) -> tuple[bytes, ClientState]:
    """Answer HELLO: check the server's suite and name, encapsulate, sign the transcript."""
    body = _strip(hello_msg, 1 + NONCE + EPH + 1, "hello")
    if body[0] != suite:
        offered = LinkSuite(body[0]).label if body[0] in set(LinkSuite) else f"#{body[0]}"
        raise AuthenticationError(
            f"{expected_server!r} offers the {offered} link suite, this side is configured "
            f"for {suite.label}: set `suite` to the same value on every party and the dealer"
        )
    body = body[1:]
    nonce_s, eph_s = body[:NONCE], body[NONCE : NONCE + EPH]
    rest = body[NONCE + EPH :]
    kem_pk = kem_ct = b""
    secret_pq = b""
    if suite is LinkSuite.MLKEM768_X25519:
        if len(rest) < KEM_PK + 1:
            raise AuthenticationError("malformed handshake hello: the ML-KEM key is missing")
        kem_pk, rest = rest[:KEM_PK], rest[KEM_PK:]
        try:
            secret_pq, kem_ct = MLKEM768PublicKey.from_public_bytes(kem_pk).encapsulate()
        except ValueError as exc:
            raise AuthenticationError("the peer's ML-KEM-768 key is invalid") from exc
    server = rest.decode(errors="replace")
    if server != expected_server:
        raise AuthenticationError(f"connected to {server!r}, expected {expected_server!r}")
    eph_c = _eph_bytes(eph)
    transcript = _transcript(
        suite, nonce_s + nonce_c, eph_s + kem_pk + eph_c + kem_ct, server, name
    )
    sig = key.sign(transcript + b"/client")
    secret = _x25519(eph, eph_s) + secret_pq
    return MAGIC + nonce_c + eph_c + kem_ct + sig + name.encode(), ClientState(
        transcript, server, secret
    )


def server_accept(
    auth_msg: bytes,
    *,
    name: str,
    key: Ed25519PrivateKey,
    nonce_s: bytes,
    eph: X25519PrivateKey,
    known: Mapping[str, Ed25519PublicKey],
    kem: MLKEM768PrivateKey | None = None,
) -> tuple[str, bytes, Channel]:
    """Verify AUTH against the known client keys; return (client name, ACCEPT, channel)."""
    suite = LinkSuite.X25519 if kem is None else LinkSuite.MLKEM768_X25519
    ct_len = 0 if kem is None else KEM_CT
    body = _strip(auth_msg, NONCE + EPH + ct_len + SIG + 1, "auth")
    nonce_c, eph_c = body[:NONCE], body[NONCE : NONCE + EPH]
    kem_ct = body[NONCE + EPH : NONCE + EPH + ct_len]
    at = NONCE + EPH + ct_len
    sig = body[at : at + SIG]
    client = body[at + SIG :].decode(errors="replace")
    pub = known.get(client)
    if pub is None:
        raise AuthenticationError(f"unknown peer {client!r}: add its public key to the config")
    kem_pk = b"" if kem is None else kem.public_key().public_bytes_raw()
    ephs = _eph_bytes(eph) + kem_pk + eph_c + kem_ct
    transcript = _transcript(suite, nonce_s + nonce_c, ephs, name, client)
    try:
        pub.verify(sig, transcript + b"/client")
    except InvalidSignature as exc:
        raise AuthenticationError(
            f"peer {client!r} failed the key check (wrong key, or another link suite?)"
        ) from exc
    secret = _x25519(eph, eph_c)
    if kem is not None:
        try:
            secret += kem.decapsulate(kem_ct)
        except ValueError as exc:
            raise AuthenticationError(f"peer {client!r} sent an invalid ML-KEM ciphertext") from exc
    channel = _channel(secret, transcript, server=True)
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
    return _channel(state.secret, state.transcript, server=False)
