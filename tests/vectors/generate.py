"""Regenerate ``contract_vectors.json``: ``python -m tests.vectors.generate``.

The vectors pin the contract's wire behaviour so another implementation can
check itself: fixed-point encodings, PRG output, seed-compressed shares from a
fixed randomness stream, header bytes, and sealed envelopes with the keys to
open them (HPKE encryption is randomised, so envelopes are checked by opening,
not by re-sealing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tecc_contract import prg
from tecc_contract.envelope import reconstruct_batch
from tecc_contract.fixedpoint import FixedPoint
from tecc_contract.header import Column, EnvelopeHeader, SegmentMeta
from tecc_contract.keys import KemSuite
from tecc_contract.scale import Scale
from tecc_contract.sharing import expand_share, split
from tests.contract.helpers import make_system, regular_segment, seeded_random_bytes

PATH = Path(__file__).with_name("contract_vectors.json")
T0 = 1_700_000_000_000_000_000
#: A version-1 header (no per-segment scale), as gateways before version 2 wrote it.
V1_HEADER_HEX = (
    "010467772d310700000000000000020101001001000000002a36fe9c971701000d6c696e65312e6d312e"
    "74656d70030000000000002a36fe9c971700e1f50500000000"
)


def _u64(a: np.ndarray) -> list[str]:
    return [str(int(x)) for x in a.reshape(-1)]


def build() -> dict[str, Any]:
    """All vectors as a JSON-ready dict."""
    values = [0.0, 1.0, -1.0, 2.0**-16, -(2.0**-16), 3.14159, -273.15, 1000.0, 2.0**-17]
    fixed = [
        {"frac_bits": f, "value": v, "encoded": str(FixedPoint(f).encode_scalar(v))}
        for f in (16, 20)
        for v in values
    ]
    seed = bytes(range(32))
    prg_vec = {
        "seed": seed.hex(),
        "label": "column/value",
        "words": _u64(prg.expand(seed, 8, b"column/value")),
    }
    secret = FixedPoint().encode(np.array([1.5, -2.25, 100.0, 0.0]))
    shares = []
    for n, vp in ((2, 0), (3, 2)):
        sh = split(secret, n, vector_party=vp, random_bytes=seeded_random_bytes(b"vectors"))
        shares.append(
            {
                "n": n,
                "vector_party": vp,
                "randomness": "AES-256-CTR keystream, key SHA-256(b'vectors'), "
                "one call per seed with label = call counter (u64 LE)",
                "shares": [
                    {"seed": s.seed.hex()} if s.seed else {"vector": _u64(s.vector)}  # type: ignore[arg-type]
                    for s in sh
                ],
                "expanded": [_u64(expand_share(s, secret.shape)) for s in sh],
            }
        )
    header = EnvelopeHeader(
        gateway_id="gw-1",
        seq=7,
        n_parties=2,
        party=1,
        vector_party=1,
        suite=KemSuite.X25519,
        columns=(Column.VALUE,),
        frac_bits=16,
        created_ns=T0,
        segments=(
            SegmentMeta(
                "line1.m1.temp",
                T0 + np.arange(3, dtype=np.int64) * 10**8,
                Scale.for_range(-40.0, 125.0, 12),
            ),
        ),
    )
    scales = []
    for low, high in ((0.0, 24_000.0), (-40.0, 125.0), (0.0, 1e7), (0.0, 1e9), (0.0, 150.0)):
        sc = Scale.for_range(low, high, 12)
        probe = [low, (low + high) / 2, high]
        scales.append(
            {
                "range": [low, high],
                "value_bound_bits": 12,
                "exponent": sc.exponent,
                "offset": sc.offset,
                "values": probe,
                "encoded": _u64(sc.encode(np.array(probe), FixedPoint())),
            }
        )
    envelopes = []
    for suite, n in ((KemSuite.X25519, 2), (KemSuite.X25519, 3), (KemSuite.MLKEM768_X25519, 2)):
        sealer, openers, _ = make_system(suite, n, (Column.VALUE, Column.SQUARE))
        frames = sealer.seal(9, [regular_segment("line1.m1.temp", 4)], created_ns=T0)
        opened = [o.open(f) for o, f in zip(openers, frames, strict=True)]
        cols = reconstruct_batch(opened)
        envelopes.append(
            {
                "suite": suite.value,
                "n": n,
                "keys": "helpers.keys_for(); gateway key ed25519_from_seed(b'gw-1')",
                "frames": [f.hex() for f in frames],
                "party_shares": [
                    {c.value: _u64(op.columns[c]) for c in op.columns} for op in opened
                ],
                "reconstructed": {c.value: _u64(v) for c, v in cols.items()},
            }
        )
    return {
        "fixed_point": fixed,
        "prg": prg_vec,
        "sharing": {"secret": _u64(secret), "cases": shares},
        "header": {"hex": header.encode().hex()},
        "header_v1": {"hex": V1_HEADER_HEX},
        "scale": scales,
        "envelopes": envelopes,
    }


if __name__ == "__main__":
    PATH.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {PATH}")
