"""Deterministic fixtures for the fuzz targets: keys, seeded randomness, sealed batches.

The contract tests use them too (``tests/contract/helpers.py`` imports them
from here), so that ``bench/`` never imports ``tests/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tecc_contract import prg
from tecc_contract.envelope import ClusterKey, Opener, Sealer, SensorSegment
from tecc_contract.header import Column
from tecc_contract.keys import HpkePrivateKey, KemSuite, load_private_key
from tecc_contract.scale import Scale


def seeded_random_bytes(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic cryptographic byte source (AES-CTR keyed by SHA-256(seed))."""
    key = hashlib.sha256(seed).digest()
    counter = 0

    def draw(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return prg.expand_bytes(key, n, label=counter.to_bytes(8, "little"))

    return draw


def ed25519_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())


def keys_for(suite: KemSuite, n: int) -> list[tuple[HpkePrivateKey, bytes]]:
    """Deterministic recipient key pairs (private object, public raw bytes) for either suite."""
    out = []
    for i in range(n):
        raw = prg.expand_bytes(hashlib.sha256(b"cluster" + bytes([i])).digest(), 96)
        x = x25519.X25519PrivateKey.from_private_bytes(raw[64:])
        x_pub = x.public_key().public_bytes_raw()
        if suite is KemSuite.X25519:
            out.append((load_private_key(suite, raw[64:]), x_pub))
        else:
            m = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64])
            pub = m.public_key().public_bytes_raw() + x_pub
            out.append((load_private_key(suite, raw), pub))
    return out


def make_system(
    suite: KemSuite = KemSuite.X25519,
    n: int = 2,
    columns: tuple[Column, ...] = (Column.VALUE,),
    hist_edges: tuple[float, ...] = (),
    gateway_id: str = "gw-1",
    *,
    scales: Mapping[str, Scale] | None = None,
) -> tuple[Sealer, list[Opener], Ed25519PrivateKey]:
    """A sealer and one opener per party, all keys deterministic."""
    gw = ed25519_from_seed(gateway_id.encode())
    keys = keys_for(suite, n)
    sealer = Sealer(
        gateway_id=gateway_id,
        signing_key=gw,
        clusters=[ClusterKey(i, suite, pub) for i, (_, pub) in enumerate(keys)],
        columns=columns,
        hist_edges=hist_edges,
        scales=scales,
        random_bytes=seeded_random_bytes(b"sealer"),
    )
    openers = [
        Opener(party=i, suite=suite, private_key=sk, gateway_keys={gateway_id: gw.public_key()})
        for i, (sk, _) in enumerate(keys)
    ]
    return sealer, openers, gw


def regular_segment(sensor: str, n: int, t0: int = 1_700_000_000_000_000_000) -> SensorSegment:
    """A regularly sampled sensor (10 Hz) with smooth values."""
    ts = t0 + np.arange(n, dtype=np.int64) * 100_000_000
    values = 50.0 + 10.0 * np.sin(np.arange(n) / 25.0)
    return SensorSegment(sensor, ts, values)
