"""Fuzz the messages cluster services take from each other.

Four parsers, chosen by the case's first byte: an MPC round payload
(``protocol.decode`` then ``combine``), a dealer batch frame
(``bundle_wire.decode_batch`` for party 0 and party 1), the mesh handshake
(``client_auth``, ``server_accept``, ``client_finish``) and a signed + HPKE
service message (``channel.open_message``, as the output service reads it).
Each may raise only the engine's :class:`MpcError` or the service layer's
:class:`PeerError`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cloud_tecc.errors import PeerError
from cloud_tecc.mpc import bundle_wire, handshake, protocol
from cloud_tecc.mpc.correlations import Plan
from cloud_tecc.mpc.dealer import deal
from cloud_tecc.mpc.errors import MpcError
from cloud_tecc.service.channel import dumps, open_message, seal_message, sender_of
from fuzzing.fixtures import seeded_random_bytes
from fuzzing.harness import Target
from tecc_contract.attestation import VerifiedIdentity
from tecc_contract.keys import KemSuite, generate_cluster_keypair_raw, load_private_key


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())


_P0, _P1 = _key("party-0"), _key("party-1")
_NONCE_S, _NONCE_C = b"s" * 32, b"c" * 32
_EPH_S = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"eph-s").digest())
_EPH_C = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"eph-c").digest())


def _channel() -> handshake.Channel:
    """A fresh channel (counter 0) with fixed keys, both directions alike."""
    return handshake.Channel(b"k" * 32, b"k" * 32)


_OPEN: Final = protocol.Open(
    (
        protocol.arith(np.arange(5, dtype=np.uint64)),
        protocol.xor(np.arange(3, dtype=np.uint64), 64),
        protocol.xor(np.ones(11, dtype=np.uint8), 1),
        protocol.xor(np.full(7, 3, dtype=np.uint8), 4),
    )
)
_HPKE_PRIV, _HPKE_PUB = generate_cluster_keypair_raw(KemSuite.X25519)
_OUTPUT_ID = VerifiedIdentity("output", "output", b"m" * 32, {"hpke": _HPKE_PUB}, "x25519", 0, "p")
_SENDER = VerifiedIdentity(
    "party", "party-0", b"m" * 32, {"sign": _P0.public_key().public_bytes_raw()}, "x25519", 0, "p"
)


def _round(body: bytes) -> None:
    peer = protocol.decode(_OPEN, body)
    opened = protocol.combine(_OPEN, [peer])
    assert len(opened) == len(_OPEN.parts)


def _dealer(body: bytes) -> None:
    errors = 0
    for party in (0, 1):
        try:
            bundle_wire.decode_batch(body, party=party)
        except MpcError:
            errors += 1
    if errors:
        raise MpcError("refused")


def _handshake(body: bytes) -> None:
    errors = 0
    steps = (
        lambda: handshake.client_auth(
            body,
            name="party-1",
            key=_P1,
            expected_server="party-0",
            nonce_c=_NONCE_C,
            eph=_EPH_C,
        ),
        lambda: handshake.server_accept(
            body,
            name="party-0",
            key=_P0,
            nonce_s=_NONCE_S,
            eph=_EPH_S,
            known={"party-1": _P1.public_key()},
        ),
        lambda: handshake.client_finish(body, _STATE, _P0.public_key()),
        lambda: _channel().open(body),
    )
    for step in steps:
        try:
            step()
        except MpcError:
            errors += 1
    if errors:
        raise MpcError("refused")


def _service(body: bytes) -> None:
    try:
        doc = json.loads(body)
    except ValueError as exc:  # aiohttp's request.json() fails the same way; answered 400
        raise PeerError("not JSON") from exc
    sender_of(doc)
    open_message(
        doc,
        purpose="results",
        sender=_SENDER,
        suite=KemSuite.X25519,
        private_key=load_private_key(KemSuite.X25519, _HPKE_PRIV),
    )


_PARSERS: Final = (_round, _dealer, _handshake, _service)


def run(data: bytes) -> None:
    """Dispatch on the first byte; feed the rest to one peer-message parser."""
    if not data:
        raise MpcError("empty message")
    _PARSERS[data[0] % len(_PARSERS)](data[1:])


def _seeds() -> tuple[list[bytes], handshake.ClientState]:
    hello = handshake.hello("party-0", _NONCE_S, _EPH_S)
    auth, state = handshake.client_auth(
        hello, name="party-1", key=_P1, expected_server="party-0", nonce_c=_NONCE_C, eph=_EPH_C
    )
    _, accept, _ = handshake.server_accept(
        auth,
        name="party-0",
        key=_P0,
        nonce_s=_NONCE_S,
        eph=_EPH_S,
        known={"party-1": _P1.public_key()},
    )
    batches = deal(
        Plan(triples=3, truncs=2, dabits=2, comparisons=2),
        2,
        random_bytes=seeded_random_bytes(b"d"),
    )
    msg = seal_message(
        b'{"layout": {}}',
        purpose="results",
        sender_id="party-0",
        sign_key=_P0,
        recipient=_OUTPUT_ID,
    )
    return [
        bytes([0]) + protocol.encode(_OPEN).tobytes(),
        bytes([1]) + bundle_wire.encode_batch(0, 7, batches[0]),
        bytes([1]) + bundle_wire.encode_batch(1, 7, batches[1]),
        bytes([2]) + hello,
        bytes([2]) + auth,
        bytes([2]) + accept,
        bytes([2]) + _channel().seal(b"a round frame"),
        bytes([3]) + dumps(msg),
    ], state


_SEEDS, _STATE = _seeds()
TARGET = Target("mpc_messages", _SEEDS, run, (MpcError, PeerError))
