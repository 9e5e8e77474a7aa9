"""Entry point of ``./tecc demo``: run the pipeline on this machine.

This stage exercises the edge↔cloud contract end to end: a simulated sensor's
readings are validated, split into shares for two clusters, sealed, opened by
each cluster with its own key, and only an aggregate is reconstructed.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tecc_contract.envelope import ClusterKey, Opener, Sealer, SensorSegment
from tecc_contract.fixedpoint import FixedPoint, SensorRange, validate
from tecc_contract.header import Column
from tecc_contract.keys import KemSuite, generate_cluster_keypair
from tecc_contract.sharing import reconstruct


def main(argv: list[str] | None = None) -> int:
    """Seal a stream of batches for two clusters and release only their means."""
    parser = argparse.ArgumentParser(prog="tecc demo", description=__doc__)
    parser.add_argument("--batches", type=int, default=5, help="batches to stream")
    parser.add_argument("--pq", action="store_true", help="use the ML-KEM-768+X25519 KEM")
    args = parser.parse_args(argv)
    suite = KemSuite.MLKEM768_X25519 if args.pq else KemSuite.X25519
    clusters = [generate_cluster_keypair(suite) for _ in range(2)]
    gateway_key = Ed25519PrivateKey.generate()
    sealer = Sealer(
        gateway_id="gw-demo",
        signing_key=gateway_key,
        clusters=[ClusterKey(i, suite, pub) for i, (_, pub) in enumerate(clusters)],
        columns=(Column.VALUE, Column.SQUARE),
    )
    openers = [
        Opener(
            party=i, suite=suite, private_key=sk, gateway_keys={"gw-demo": gateway_key.public_key()}
        )
        for i, (sk, _) in enumerate(clusters)
    ]
    rng = np.random.default_rng()
    codec = FixedPoint()
    sensor = SensorRange(0.0, 150.0)
    for seq in range(args.batches):
        values = rng.normal(60.0, 2.0, 1000)
        values[::97] = np.nan  # a failing sensor: rejected, counted, never shared
        check = validate(values, sensor)
        ts = time.time_ns() + np.arange(1000, dtype=np.int64) * 10_000_000
        seg = SensorSegment("line1.m1.bearing_temp", ts[check.accepted], values[check.accepted])
        frames = sealer.seal(seq, [seg], created_ns=time.time_ns())
        opened = [o.open(f) for o, f in zip(openers, frames, strict=True)]
        # Each cluster sums its share locally; only the two sums are combined.
        sums = [np.array([op.columns[Column.VALUE].sum()], dtype=np.uint64) for op in opened]
        mean = codec.decode(reconstruct(sums))[0] / seg.values.size
        rejected = {str(k): v for k, v in check.rejected.items()}
        print(
            f"batch {seq}: {seg.values.size} readings shared as {sum(map(len, frames))} bytes, "
            f"rejected {rejected}, released mean {mean:.4f} "
            f"(plaintext {float(np.mean(seg.values)):.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
