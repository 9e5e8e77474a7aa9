"""Contract benchmark: encode + share + seal throughput and wire bytes per reading.

``python -m bench.contract [--quick]``. Baseline in the same run: fixed-point
encoding alone (validation included) on the same batches. One core.
"""

from __future__ import annotations

import os
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._report import emit, parse_args, rate
from tecc_contract.envelope import ClusterKey, Opener, Sealer, SensorSegment
from tecc_contract.fixedpoint import FixedPoint, SensorRange, validate
from tecc_contract.keys import KemSuite, generate_cluster_keypair
from tecc_contract.scale import Scale

BATCH = 1000
T0 = 1_700_000_000_000_000_000
#: The benchmark sensor's declared range -50..200 and the scale it is shared in.
SCALE = Scale.for_range(-50.0, 200.0, 12)


def _system(n: int, suite: KemSuite = KemSuite.X25519) -> tuple[Sealer, list[Opener]]:
    keys = [generate_cluster_keypair(suite) for _ in range(n)]
    gw = Ed25519PrivateKey.generate()
    sealer = Sealer(
        gateway_id="gw-bench",
        signing_key=gw,
        clusters=[ClusterKey(i, suite, pub) for i, (_, pub) in enumerate(keys)],
        scales=dict.fromkeys(("s", "line1.m1.bearing_temp"), SCALE),  # as a gateway shares
    )
    openers = [
        Opener(party=i, suite=suite, private_key=sk, gateway_keys={"gw-bench": gw.public_key()})
        for i, (sk, _) in enumerate(keys)
    ]
    return sealer, openers


def main() -> None:
    """Measure and print the JSON result line."""
    args = parse_args(__doc__ or "")
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rng = np.random.default_rng(1)
    values = rng.normal(60.0, 5.0, BATCH)
    ts = T0 + np.arange(BATCH, dtype=np.int64) * 10_000_000
    sensor = SensorRange(-50.0, 200.0)
    codec = FixedPoint()

    def encode_only() -> int:
        ok = validate(values, sensor).accepted
        codec.encode(values[ok])
        return BATCH

    sealer2, openers2 = _system(2)
    seq = 0

    def share_seal() -> int:
        nonlocal seq
        ok = validate(values, sensor).accepted
        sealer2.seal(seq, [SensorSegment("s", ts[ok], values[ok])], created_ns=T0)
        seq += 1
        return BATCH

    frames = sealer2.seal(1, [SensorSegment("s", ts, values)], created_ns=T0)

    def open_one() -> int:
        openers2[0].open(frames[0])
        openers2[1].open(frames[1])
        return BATCH

    sealer3, _ = _system(3)
    sealer_pq, _ = _system(2, KemSuite.MLKEM768_X25519)
    seg = [SensorSegment("line1.m1.bearing_temp", ts, values)]
    wire = {
        n: sum(len(f) for f in s.seal(0, seg, created_ns=T0)) / BATCH
        for n, s in ((2, sealer2), (3, sealer3))
    }
    wire_pq = sum(len(f) for f in sealer_pq.seal(0, seg, created_ns=T0)) / BATCH

    plain = rate(encode_only, seconds)
    sealed = rate(share_seal, seconds)
    opened = rate(open_one, seconds / 2)
    emit(
        {
            "share_seal_readings_per_s": round(sealed),
            "plaintext_encode_readings_per_s": round(plain),
            "share_seal_vs_encode_ratio": round(sealed / plain, 4),
            "open_both_parties_readings_per_s": round(opened),
            "wire_bytes_per_reading_n2": round(wire[2], 3),
            "wire_bytes_per_reading_n3": round(wire[3], 3),
            "wire_bytes_per_reading_n2_mlkem768_x25519": round(wire_pq, 3),
            "plaintext_bytes_per_reading": 16,
            "batch_readings": BATCH,
            "cpu_count": os.cpu_count(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


if __name__ == "__main__":
    main()
