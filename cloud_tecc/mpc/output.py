"""Open a result to a named output party only: each party HPKE-encrypts its share to it.

No compute party learns the result: party ``i`` sends
``HPKE(output_key, share_i, info = label ‖ context ‖ i)`` and the output party
decrypts the N ciphertexts and adds them. The party index sits in the HPKE
``info``, so a share cannot be replayed as another party's, and ``context``
(e.g. a window id) binds the ciphertext to one result.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import numpy as np
from cryptography.exceptions import InvalidTag

from cloud_tecc.mpc.errors import ProtocolError
from tecc_contract.keys import HpkePrivateKey, HpkePublicKey, KemSuite
from tecc_contract.ring import RingArray, from_bytes, to_bytes

_LABEL: Final = b"tecc-mpc-output/v1/"
_HEAD: Final = struct.Struct("<HH")


def _info(context: bytes, party: int) -> bytes:
    return _LABEL + struct.pack("<H", party) + context


def open_to(
    share: RingArray,
    party: int,
    n: int,
    public_key: HpkePublicKey,
    *,
    suite: KemSuite = KemSuite.X25519,
    context: bytes = b"",
) -> bytes:
    """Encrypt this party's result share to the output party's HPKE key."""
    ct = suite.hpke_suite().encrypt(to_bytes(share), public_key, info=_info(context, party))
    return _HEAD.pack(party, n) + ct


def reconstruct_output(
    ciphertexts: Sequence[bytes],
    private_key: HpkePrivateKey,
    *,
    suite: KemSuite = KemSuite.X25519,
    context: bytes = b"",
) -> RingArray:
    """Decrypt one ciphertext from every party and add the shares (output party side)."""
    if not ciphertexts:
        raise ProtocolError("no result shares to reconstruct")
    shares: dict[int, RingArray] = {}
    n_seen: set[int] = set()
    for blob in ciphertexts:
        if len(blob) < _HEAD.size:
            raise ProtocolError("result share ciphertext is truncated")
        party, n = _HEAD.unpack_from(blob)
        n_seen.add(n)
        try:
            pt = suite.hpke_suite().decrypt(
                blob[_HEAD.size :], private_key, info=_info(context, party)
            )
        except InvalidTag as exc:
            raise ProtocolError(
                f"result share of party {party} does not decrypt: wrong output key or context"
            ) from exc
        if party in shares:
            raise ProtocolError(f"two result shares claim party {party}")
        shares[party] = from_bytes(pt)
    (n,) = n_seen if len(n_seen) == 1 else (-1,)
    if set(shares) != set(range(n)):
        raise ProtocolError(f"need one share from each of parties 0..{n - 1}, got {sorted(shares)}")
    lengths = {s.shape[0] for s in shares.values()}
    if len(lengths) != 1:
        raise ProtocolError("result shares have different lengths")
    out = np.zeros(lengths.pop(), dtype=np.uint64)
    for s in shares.values():
        out += s
    return out
