"""Run one compute party as a process: mesh over WebSockets, dealer over WebSocket.

``python -m bench.mesh.node --config mesh.json --party I --key I.key
--program suite --inputs in_I.npz --output out_I.npz [--prefetch B]``

Offline phase: connect to the dealer and fetch ``B`` batches; then connect the
mesh (a barrier), run the program, write the output shares, and print one JSON
line with timings and traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.mesh.programs import PROGRAMS
from cloud_tecc.mpc.config import MeshFile, load_private_key
from cloud_tecc.mpc.dealer_client import DealerLink
from cloud_tecc.mpc.engine import Party
from cloud_tecc.mpc.errors import MpcError
from cloud_tecc.mpc.transport_ws import MeshConfig, WsTransport


async def run_node(args: argparse.Namespace) -> dict[str, object]:
    """Run the configured program for one party and return its report."""
    mesh = MeshFile.load(Path(args.config))
    key = load_private_key(Path(args.key))
    i = args.party
    with np.load(args.inputs) as z:
        inputs = {k: np.ascontiguousarray(z[k]) for k in z.files}
    d = mesh.dealer
    source = await DealerLink.connect(
        f"http://{d.host}:{d.port}/dealer",
        party=i,
        key=key,
        dealer_key=d.public_key,
        frac_bits=mesh.frac_bits,
        wait_s=args.timeout,
    )
    t0 = time.perf_counter()
    await source.prefetch(args.prefetch)
    offline_s = time.perf_counter() - t0
    cfg = MeshConfig(
        party=i,
        addresses={j: (p.host, p.port) for j, p in enumerate(mesh.parties)},
        key=key,
        peer_keys={j: p.public_key for j, p in enumerate(mesh.parties) if j != i},
        round_timeout=args.timeout,
        connect_timeout=args.timeout,
    )
    transport = await WsTransport.start(cfg)
    try:
        party = Party(i, mesh.n, transport, source, frac_bits=mesh.frac_bits)
        outputs, timings = await PROGRAMS[args.program](party, inputs)
        await party.sync()
    finally:
        await transport.close()
        await source.close()
    if args.output:
        np.savez(args.output, allow_pickle=False, **outputs)
    t = party.traffic
    return {
        "party": i,
        "offline_s": offline_s,
        "rounds": t.rounds,
        "bytes_sent": t.bytes_sent,
        "bytes_received": t.bytes_received,
        "dealer_bytes_received": source.bytes_received,
        "per_round": t.per_round,
        "per_round_total": sum(t.per_round),
        **timings,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--party", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--program", choices=sorted(PROGRAMS), required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--output")
    ap.add_argument("--prefetch", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--profile", help="write cProfile statistics of the whole run here")
    args = ap.parse_args(argv)
    prof = cProfile.Profile() if args.profile else None
    try:
        if prof is not None:
            prof.enable()
        report = asyncio.run(run_node(args))
    except MpcError as exc:
        print(f"party {args.party}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
