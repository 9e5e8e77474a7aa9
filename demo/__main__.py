"""``./tecc demo``: the whole pipeline on this machine, with its dashboard.

Starts (or resumes, from ``--state``, default ``var/demo``) the simulator,
the gateways, the clusters (``--clusters N``, default 2: N independent trust
domains), the dealer and the output service as supervised processes,
prints the dashboard URL and a status line every two seconds, and stops
everything cleanly on Ctrl-C / SIGTERM (or after ``--duration``), keeping
the state for the next run. Children's logs: ``<state>/logs/``.
``--policy`` and ``--sim-config`` choose the clusters' analytics and the
simulated line (MQTT-only and OPC-UA-only lines work), ``--scenario`` its
anomalies. ``--workers K`` runs each cluster in the JetStream layout: its
own NATS JetStream node, an ingest frontend, and K shard workers (with a
dealer per shard; docs/CLOUD.md, "JetStream layout" and "Shards").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from demo.layout import PolicyError
from demo.pipeline import DEMO_POLICY, DEMO_SIM, ROOT, Pipeline, PipelineError
from demo.status import StatusLine, signin_hint


async def _run(args: argparse.Namespace) -> int:
    pipeline = Pipeline(
        Path(args.state),
        gateways=args.gateways,
        clusters=args.clusters,
        dashboard_port=args.port,
        fresh=args.fresh,
        sim_speed=args.speed,
        sim_config=args.sim_config,
        policy=args.policy,
        sim_scenario=args.scenario,
        workers=args.workers,
        dealer_standbys=args.dealer_standbys,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"starting the pipeline (state in {pipeline.state_dir}) ...", flush=True)
    try:
        await pipeline.start()
    except (PipelineError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert pipeline.urls is not None
    print(f"dashboard: {pipeline.urls.dashboard}", flush=True)
    print(f"output API: {pipeline.urls.output_api}   logs: {pipeline.state_dir / 'logs'}")
    print(signin_hint(pipeline.urls), flush=True)
    status = StatusLine(pipeline)
    deadline = loop.time() + args.duration if args.duration else None
    tty = sys.stdout.isatty()
    try:
        while not stop.is_set():
            if deadline is not None and loop.time() >= deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            line = await status.render()
            print(("\r" + line + "\x1b[K") if tty else line, end="" if tty else "\n", flush=True)
    finally:
        print("\nstopping (state kept) ...", flush=True)
        await pipeline.stop()
    return 0


def _clusters(text: str) -> int:
    n = int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"write a number of clusters >= 2 (got {n})")
    return n


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run until stopped."""
    parser = argparse.ArgumentParser(prog="tecc demo", description=__doc__)
    parser.add_argument("--state", default=str(ROOT / "var" / "demo"), help="state directory")
    parser.add_argument("--fresh", action="store_true", help="wipe the state directory first")
    parser.add_argument("--gateways", type=int, default=2, help="number of gateways (1-3)")
    parser.add_argument(
        "--clusters",
        type=_clusters,
        default=2,
        help="number of TECC clusters (MPC parties, each its own trust domain; >= 2)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="K",
        help="run each cluster as JetStream + an ingest frontend + K shard workers "
        "(default: one all-in-one process per cluster)",
    )
    parser.add_argument(
        "--dealer-standbys",
        type=int,
        default=0,
        metavar="D",
        help="standby dealers per shard (0-7): party 0 moves the shard to the next one "
        "when its dealer dies (default 0)",
    )
    parser.add_argument("--port", type=int, default=None, help="dashboard port (default 8730)")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    parser.add_argument(
        "--policy", type=Path, default=DEMO_POLICY, help="analytics policy YAML of the clusters"
    )
    parser.add_argument(
        "--sim-config",
        type=Path,
        default=DEMO_SIM,
        help="simulated line (YAML; any mix of MQTT and OPC-UA sensors)",
    )
    parser.add_argument(
        "--scenario", type=Path, default=None, help="YAML 'anomalies:' list replacing the line's"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
