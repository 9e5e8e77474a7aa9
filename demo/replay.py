"""``./tecc replay FILE.csv --sensor ID``: the whole pipeline on a recording, then a summary.

Reads and checks the CSV first (columns, disorder, value range), writes the
policy (``--policy``, else ``configs/replay/policy.yaml`` with a window of
about 24 readings), starts the pipeline of :mod:`demo.pipeline` with one
gateway fed by ``tecc-sim replay`` over MQTT, and serves the dashboard while
the file plays. With recorded stamps (the default) the gateway declares the
sensor a backfill sensor and the clusters window the data by its own event
time, as fast as they compute; ``--rebase``/``--respace`` replay it live,
stamped by the replay clock. Once every row is accounted for (counted in a
released window, rejected at the gateway, or late) it prints a summary and
one JSON line, then keeps serving the dashboard until Ctrl-C (``--exit``:
stop at once). Exit code 0 when every row is accounted for, 1 when the
replay stalled short of that, 2 for an error before or while starting.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import signal
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from demo.devstack.deployment import auth_headers
from demo.feed import ReplayFeed
from demo.layout import PolicyError, load_policy
from demo.pipeline import ROOT, Pipeline, PipelineError
from demo.status import metric_sum
from firmware_sim.cli import replay_flags, replay_timing
from firmware_sim.errors import SimError
from firmware_sim.replay import Disorder, Recording, Timing, check_timing, read_csv
from tecc_contract.fixedpoint import MAX_ABS_RANGE

REPLAY_POLICY = ROOT / "configs" / "replay" / "policy.yaml"
NICE_WINDOWS_S: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800)
NICE_WINDOWS_S += (3600, 7200, 10800, 21600, 43200, 86400)
READINGS_PER_WINDOW = 24
STALL_S = 60.0


class ReplayUsageError(Exception):
    """The command line or the file cannot be replayed; the message says what to change."""


def published_spacing(
    recording: Recording, timing: Timing, speed: float, respace: float | None
) -> float:
    """Median spacing, in seconds, of the stamps the replay publishes."""
    if timing is Timing.RESPACE and respace is not None:
        return respace
    stamps = [r.ts for r in recording.rows]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    median = statistics.median(gaps) if gaps else 1.0
    return median if timing is Timing.RECORDED else median / speed


def window_for(spacing_s: float) -> float:
    """The shortest nice window holding about :data:`READINGS_PER_WINDOW` readings."""
    want = READINGS_PER_WINDOW * spacing_s
    return float(next((w for w in NICE_WINDOWS_S if w >= want), NICE_WINDOWS_S[-1]))


def value_range(
    recording: Recording, given: list[float] | None, bound: float
) -> tuple[float, float]:
    """The declared range: ``--range``, else the data's span widened by 10 % each side.

    ``bound`` is the largest magnitude a declared range may reach (±2^30; the
    gateway shares any such range scaled, docs/GATEWAY.md).
    """
    values = [r.value for r in recording.rows if math.isfinite(r.value)]
    if given is not None:
        low, high = given
    elif not values:
        raise ReplayUsageError("the value column holds no finite number")
    else:
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.1, 1.0)
        low, high = max(lo - pad, -bound + 1), min(hi + pad, bound - 1)
    worst = max((abs(v) for v in values), default=0.0)
    if worst >= bound or max(abs(low), abs(high)) >= bound:
        raise ReplayUsageError(
            f"values reach {worst:g}: a declared range holds |x| < {bound:g} in the "
            "sensor's unit; replay the column in a larger unit"
        )
    return low, high


def write_policy(args: argparse.Namespace, state: Path, sensor: str, window_s: float) -> Path:
    """The policy the clusters run: ``--policy`` as given, else the replay default."""
    if args.policy is not None:
        load_policy(args.policy)
        return Path(args.policy)
    doc = load_policy(REPLAY_POLICY)
    doc["window_s"] = window_s
    if args.limit is not None:
        doc["limits"] = [{"sensor": sensor, "low": args.limit[0], "high": args.limit[1]}]
    state.mkdir(parents=True, exist_ok=True)
    path = state / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    """One GET of the pipeline's HTTP endpoints (JSON for the output API, text otherwise).

    The output API needs the output's token, registered by the pipeline
    (:func:`demo.devstack.deployment.register_output_token`).
    """
    async with session.get(url, headers=auth_headers(url), ssl=False) as r:  # loopback
        r.raise_for_status()
        return await r.json() if "/api/" in url else await r.text()


async def tally(pipeline: Pipeline, sensor: str) -> dict[str, Any]:
    """Released windows and alerts of ``sensor``, and the late/rejected counters."""
    urls = pipeline.urls
    if urls is None:
        raise PipelineError("the pipeline is not running")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        windows = await _get(s, f"{urls.output_api}/windows?sensor={sensor}")
        alerts = await _get(s, f"{urls.output_api}/alerts?since=0")
        gw = [await _get(s, u) for u in urls.gateway_metrics.values()]
        parties = [await _get(s, u + "/metrics") for u in urls.parties]
    mine = [a for a in alerts if a["sensor"] == sensor]
    return {
        "windows": len(windows),
        "counted": sum(int(w["count"]) for w in windows),
        "alerts": dict(sorted(Counter(a["detector"] for a in mine).items())),
        "late_gateway": int(sum(metric_sum(t, "gateway_readings_late") for t in gw)),
        "late_clusters": int(max(metric_sum(t, "tecc_ingest_late_readings") for t in parties)),
        "rejected_gateway": int(sum(metric_sum(t, "gateway_readings_rejected") for t in gw)),
        "first_window_s": windows[0]["start_ns"] / 1e9 if windows else None,
        "last_window_s": windows[-1]["start_ns"] / 1e9 if windows else None,
    }


async def wait_released(pipeline: Pipeline, sensor: str, rows: int) -> dict[str, Any]:
    """Poll until every row is counted, rejected or late, or nothing moved for STALL_S."""
    loop = asyncio.get_running_loop()
    last: dict[str, Any] = {}
    error = "no answer yet"
    moved = loop.time()
    while True:
        try:
            now = await tally(pipeline, sensor)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if now != last:
                last, moved = now, loop.time()
                print(
                    f"  released windows {now['windows']}, counted {now['counted']}/{rows}",
                    flush=True,
                )
            if accounted(rows, now):
                return now
        sim = pipeline.supervisor.children.get("sim")
        if sim is not None and sim.last_exit not in (None, 0):
            raise PipelineError(
                f"the replay failed ({sim.last_exit}); see {pipeline.log_path('sim')}"
            )
        if loop.time() - moved > STALL_S and sim is not None and not sim.running:
            if not last:
                raise PipelineError(f"could not read the output API ({error})")
            return last
        await asyncio.sleep(1.0)


def accounted(rows: int, t: dict[str, Any]) -> bool:
    """Whether every row ended counted, rejected or late."""
    return int(t["counted"]) + int(t["rejected_gateway"]) + int(t["late_gateway"]) >= rows


def summary_lines(
    args: argparse.Namespace, rec: Recording, timing: Timing, t: dict[str, Any]
) -> list[str]:
    """The human summary."""
    mode = "backfill (recorded stamps)" if timing is Timing.RECORDED else f"live ({timing.value})"
    alerts = ", ".join(f"{k} {v}" for k, v in t["alerts"].items()) or "none"
    return [
        f"replay of {args.csv} as {args.sensor}: {rec.describe()}",
        f"mode: {mode}",
        f"released: {t['windows']} windows, {t['counted']} of {len(rec.rows)} readings counted; "
        f"late: {t['late_gateway']} at the gateway, {t['late_clusters']} at the clusters; "
        f"rejected at the gateway: {t['rejected_gateway']}",
        f"alerts by detector: {alerts}",
    ]


def build_parser() -> argparse.ArgumentParser:
    """``./tecc replay`` options (the replay ones are shared with ``tecc-sim replay``)."""
    p = argparse.ArgumentParser(
        prog="tecc replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay_flags(p, positional=True)
    p.set_defaults(speed=None)
    p.add_argument("--policy", type=Path, help="analytics policy YAML (default: replay policy)")
    p.add_argument(
        "--limit",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="plant limits of the sensor (default policy only)",
    )
    p.add_argument("--unit", default="", help="engineering unit of the values")
    p.add_argument(
        "--range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="declared sensor range (default: the data's span plus 10 %%)",
    )
    p.add_argument(
        "--state",
        type=Path,
        default=ROOT / "var" / "replay",
        help="state directory (wiped at start: a replay runs on fresh clusters)",
    )
    p.add_argument("--port", type=int, default=None, help="dashboard port (default 8730)")
    p.add_argument("--exit", action="store_true", help="stop once the summary is printed")
    return p


def prepare(args: argparse.Namespace) -> tuple[Recording, Timing, ReplayFeed, Path]:
    """Check the file and options before anything starts."""
    if args.transport != "mqtt":
        raise ReplayUsageError("./tecc replay publishes over MQTT; use tecc-sim replay for OPC-UA")
    parts = args.sensor.split(".")
    if len(parts) != 3 or not all(parts):
        raise ReplayUsageError(f"--sensor must be <line>.<machine>.<sensor>, got {args.sensor!r}")
    timing = replay_timing(args)
    if args.speed is None:
        args.speed = math.inf if timing is Timing.RECORDED else 1.0
    check_timing(timing, args.speed, args.respace)
    rec = read_csv(
        args.csv,
        on_disorder=Disorder(args.on_disorder),
        time_column=args.time_column,
        value_column=args.column,
    )
    window = window_for(published_spacing(rec, timing, args.speed, args.respace))
    policy = write_policy(args, args.state / "input", args.sensor, window)
    low, high = value_range(rec, args.range, MAX_ABS_RANGE)
    feed = ReplayFeed(
        args.csv.resolve(),
        ReplayFeed.mqtt_sensor(args.sensor, unit=args.unit, low=low, high=high),
        timing=timing,
        speed=args.speed,
        respace_s=args.respace,
        on_disorder=Disorder(args.on_disorder),
        time_column=args.time_column,
        value_column=args.column,
    )
    return rec, timing, feed, policy


async def _run(args: argparse.Namespace) -> int:
    rec, timing, feed, policy = prepare(args)
    print(f"{args.csv}: {rec.describe()}", flush=True)
    pipeline = Pipeline(
        args.state / "run",
        gateways=1,
        policy=policy,
        replay=feed,
        dashboard_port=args.port,
        fresh=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"starting the pipeline (state in {pipeline.state_dir}) ...", flush=True)
    try:
        await pipeline.start()
        if pipeline.urls is None:
            raise PipelineError("the pipeline started without URLs")
        print(
            f"dashboard: {pipeline.urls.dashboard}   logs: {pipeline.state_dir / 'logs'}",
            flush=True,
        )
        waiter = asyncio.ensure_future(wait_released(pipeline, args.sensor, len(rec.rows)))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()
            return 130
        result = waiter.result()
        for line in summary_lines(args, rec, timing, result):
            print(line, flush=True)
        print(json.dumps({"rows": len(rec.rows), "nudged": rec.nudged, **result}), flush=True)
        if not args.exit:
            print(
                f"serving the dashboard at {pipeline.urls.dashboard} (Ctrl-C to stop)", flush=True
            )
            await stop.wait()
    finally:
        await pipeline.stop()
    if not accounted(len(rec.rows), result):
        print("incomplete: not every row reached a released window", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, replay, summarise."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (ReplayUsageError, SimError, PipelineError, PolicyError) as exc:
        print(f"tecc replay: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
