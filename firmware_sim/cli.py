"""Command line: ``tecc-sim run | replay | load | sensors | check-config``.

(also ``python -m firmware_sim``).

``run`` plays the configured line with its scenario and writes the ground
truth; ``replay`` turns a ``timestamp,value`` CSV into one sensor; ``load``
generates many topics or nodes at a total rate for benchmarks; ``sensors``
prints the line's sensors as JSON for writing gateway configs. Broker and
endpoint addresses in the config can be overridden by flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from firmware_sim.config import (
    KIND_DEFAULTS,
    MqttSettings,
    OpcuaSettings,
    PayloadFormat,
    SensorKind,
    SensorSpec,
    SimConfig,
    Transport,
)
from firmware_sim.config_yaml import load_config, load_scenario, mqtt_settings, opcua_settings
from firmware_sim.errors import SimConfigError, SimError
from firmware_sim.load import LoadSpec, run_mqtt_load, run_opcua_load
from firmware_sim.mqtt_publisher import MqttLink, MqttSink
from firmware_sim.opcua_server import OpcuaSink, SimOpcuaServer
from firmware_sim.plant import describe_modbus, sparkplug_filter
from firmware_sim.replay import NUDGE_S, Disorder, Timing, check_timing, read_csv, replay
from firmware_sim.runner import RunStats, Sink, run_simulation

#: Transports ``replay`` and ``load`` can publish on.
_STREAMING = [Transport.MQTT.value, Transport.OPCUA.value]


def _endpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt-host", help="MQTT broker host (overrides the config)")
    p.add_argument("--mqtt-port", type=int, help="MQTT broker port (overrides the config)")
    p.add_argument("--opcua-host", help="OPC-UA listen host (overrides the config)")
    p.add_argument("--opcua-port", type=int, help="OPC-UA listen port (overrides the config)")
    p.add_argument("--state-dir", type=Path, help="where the OPC-UA server keeps its certificate")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="tecc-sim",
        description="Simulated factory line: OPC-UA PLC, MQTT, Modbus TCP and Sparkplug B sensors.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a config file: exit 0, or 2 + reason")
    check.add_argument("file", type=Path, help="simulator config (or scenario with --scenario)")
    check.add_argument("--scenario", action="store_true", help="FILE is a scenario file")

    run = sub.add_parser("run", help="run the configured line and its anomaly scenario")
    run.add_argument("--config", type=Path, default=Path("configs/sim.yaml"))
    run.add_argument(
        "--scenario", type=Path, help="YAML file with 'anomalies:' replacing the config's"
    )
    run.add_argument("--duration", type=float, help="simulated seconds to run (default: forever)")
    run.add_argument("--speed", type=float, help="simulated seconds per wall second")
    run.add_argument("--seed", type=int, help="override the config seed")
    run.add_argument(
        "--start-time", type=float, help="simulated start, epoch seconds (default: now)"
    )
    run.add_argument("--groundtruth", type=Path, help="ground-truth JSON-lines file to write")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    _endpoint_flags(run)
    run.add_argument("--modbus-host", help="Modbus TCP listen host (overrides the config)")
    run.add_argument(
        "--modbus-port", type=int, help="Modbus TCP listen port (overrides the config)"
    )

    rep = sub.add_parser("replay", help="publish a CSV recording as one sensor")
    replay_flags(rep)
    rep.add_argument("--kind", choices=[k.value for k in SensorKind], default="generic")
    rep.add_argument("--unit", help="engineering unit (default: the kind's)")
    rep.add_argument("--range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    rep.add_argument("--payload", choices=[f.value for f in PayloadFormat], default="json")
    rep.add_argument("--qos", type=int, choices=[0, 1], default=1)
    _endpoint_flags(rep)

    sensors = sub.add_parser(
        "sensors", help="print the line's sensors as JSON (for gateway configs)"
    )
    sensors.add_argument("--config", type=Path, default=Path("configs/sim.yaml"))

    load = sub.add_parser("load", help="many topics or nodes at a total rate (benchmarks)")
    load.add_argument("--transport", choices=_STREAMING, default="mqtt")
    load.add_argument("--nodes", type=int, default=1000, help="number of topics or nodes")
    load.add_argument("--rate", type=float, default=10_000.0, help="total readings per second")
    load.add_argument("--duration", type=float, default=10.0, help="wall seconds")
    load.add_argument("--qos", type=int, choices=[0, 1], default=0)
    load.add_argument("--batch", type=int, default=1, help="readings per MQTT message")
    load.add_argument("--seed", type=int, default=42)
    _endpoint_flags(load)
    return parser


def replay_flags(p: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """The options shared by ``tecc-sim replay`` and ``./tecc replay``: file, columns, timing."""
    if positional:
        p.add_argument("csv", type=Path, metavar="FILE.csv", help="the recording to replay")
    else:
        p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--sensor", required=True, help="sensor id <line>.<machine>.<sensor>")
    p.add_argument("--transport", choices=_STREAMING, default="mqtt")
    p.add_argument("--time-column", help="header name of the timestamp column")
    p.add_argument("--column", help="header name of the value column")
    p.add_argument(
        "--on-disorder",
        choices=[d.value for d in Disorder],
        default=Disorder.REJECT.value,
        help="a repeated or backwards timestamp: fail with its line (reject) or keep the "
        f"file order and move it {NUDGE_S * 1e3:g} ms past the previous one (keep)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="recorded seconds per wall second ('inf': as fast as possible)",
    )
    timing = p.add_mutually_exclusive_group()
    timing.add_argument(
        "--rebase",
        action="store_true",
        help="stamp each row with the wall time it is published (spacing divided by --speed)",
    )
    timing.add_argument(
        "--respace",
        type=float,
        metavar="SECONDS",
        help="publish one row every SECONDS, stamped with the wall time it is published",
    )


def replay_timing(args: argparse.Namespace) -> Timing:
    """The :class:`Timing` the replay flags ask for."""
    if args.respace is not None:
        return Timing.RESPACE
    return Timing.REBASE if args.rebase else Timing.RECORDED


def _mqtt(base: MqttSettings, args: argparse.Namespace) -> MqttSettings:
    return dataclasses.replace(
        base, host=args.mqtt_host or base.host, port=args.mqtt_port or base.port
    )


def _opcua(base: OpcuaSettings, args: argparse.Namespace) -> OpcuaSettings:
    return dataclasses.replace(
        base,
        host=args.opcua_host or base.host,
        port=args.opcua_port or base.port,
        state_dir=args.state_dir or base.state_dir,
    )


def configure_run(args: argparse.Namespace) -> SimConfig:
    """The config of ``run`` after applying the command-line overrides."""
    config = load_config(args.config)
    changes: dict[str, object] = {
        "mqtt": _mqtt(config.mqtt, args),
        "opcua": _opcua(config.opcua, args),
        "modbus": dataclasses.replace(
            config.modbus,
            host=args.modbus_host or config.modbus.host,
            port=args.modbus_port or config.modbus.port,
        ),
    }
    if args.scenario is not None:
        changes["anomalies"] = load_scenario(args.scenario)
    overrides = {
        "duration_s": args.duration,
        "speed": args.speed,
        "seed": args.seed,
        "start_time": args.start_time,
        "groundtruth": args.groundtruth,
    }
    changes.update({k: v for k, v in overrides.items() if v is not None})
    return config.with_changes(**changes)


async def until_signal(coro: Coroutine[Any, Any, object]) -> bool:
    """Run ``coro``, cancelling it on SIGINT or SIGTERM; True if it ran to completion."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if task.cancelling():  # a second signal: stop waiting for a clean shutdown
            os._exit(1)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await task
    except asyncio.CancelledError:
        return False
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return True


def _cmd_run(args: argparse.Namespace) -> int:
    config = configure_run(args)
    progress = None if args.quiet else sys.stderr
    stats = RunStats()
    finished = asyncio.run(until_signal(run_simulation(config, progress=progress, stats=stats)))
    print(
        f"{'done' if finished else 'stopped'}: samples={stats.samples} dropped={stats.dropped} "
        f"lost={stats.lost} anomalies={stats.anomalies} groundtruth={config.groundtruth}"
    )
    return 0


def _replay_spec(args: argparse.Namespace) -> SensorSpec:
    parts = args.sensor.split(".")
    if len(parts) != 3 or not all(parts):
        raise SimConfigError(f"--sensor must be <line>.<machine>.<sensor>, got {args.sensor!r}")
    kind = SensorKind(args.kind)
    d = KIND_DEFAULTS[kind]
    low, high = args.range or (d.low, d.high)
    return SensorSpec(
        line=parts[0],
        machine=parts[1],
        name=parts[2],
        kind=kind,
        unit=args.unit if args.unit is not None else d.unit,
        low=low,
        high=high,
        rate_hz=1.0,
        transport=Transport(args.transport),
        signal=d.signal,
        payload=PayloadFormat(args.payload),
        qos=args.qos,
    )


async def _replay(args: argparse.Namespace) -> int:
    spec = _replay_spec(args)
    timing = replay_timing(args)
    check_timing(timing, args.speed, args.respace)
    recording = read_csv(
        args.csv,
        on_disorder=Disorder(args.on_disorder),
        time_column=args.time_column,
        value_column=args.column,
    )
    print(f"{args.csv}: {recording.describe()}", file=sys.stderr, flush=True)
    async with contextlib.AsyncExitStack() as stack:
        sink: Sink
        if spec.transport is Transport.MQTT:
            settings = _mqtt(
                dataclasses.replace(mqtt_settings(), client_id="tecc-sim-replay"), args
            )
            link = MqttLink(settings)
            await link.connect()
            stack.push_async_callback(link.close)
            sink = MqttSink(link)
        else:
            server = SimOpcuaServer(_opcua(opcua_settings(), args), [spec])
            await server.start()
            stack.push_async_callback(server.stop)
            sink = OpcuaSink(server)
        count = await replay(
            recording.rows,
            spec=spec,
            sink=sink,
            timing=timing,
            speed=args.speed,
            respace_s=args.respace,
        )
    print(f"replayed {count} rows as {spec.sensor_id} ({timing.value} stamps)", flush=True)
    return 0


def describe(config: SimConfig) -> list[dict[str, object]]:
    """One JSON-ready entry per sensor: id, transport, address, unit, range, rate."""
    out: list[dict[str, object]] = []
    registers = describe_modbus(config)
    for spec in config.sensors():
        entry: dict[str, object] = {
            "sensor": spec.sensor_id,
            "machine": spec.machine_id,
            "kind": spec.kind.value,
            "unit": spec.unit,
            "range": [spec.low, spec.high],
            "rate_hz": spec.rate_hz,
            "transport": spec.transport.value,
        }
        if spec.transport is Transport.MQTT:
            entry |= {
                "topic": spec.topic(config.mqtt.topic_prefix),
                "payload": spec.payload.value,
                "qos": spec.qos,
            }
        elif spec.transport is Transport.MODBUS:
            entry["modbus"] = registers[spec.sensor_id]
        elif spec.transport is Transport.SPARKPLUG:
            entry |= {
                "topic": sparkplug_filter(spec),
                "sparkplug": {"group": spec.line, "node": spec.machine, "metric": spec.name},
            }
        else:
            entry |= {
                "endpoint": config.opcua.endpoint,
                "namespace": config.opcua.namespace,
                "node": f"s={spec.sensor_id}",
            }
        out.append(entry)
    return out


def _progress(readings: int, seconds: float) -> None:
    sys.stderr.write(f"load: readings={readings} rate={readings / seconds:.0f}/s\n")


def _cmd_load(args: argparse.Namespace) -> int:
    spec = LoadSpec(
        nodes=args.nodes,
        total_rate=args.rate,
        duration_s=args.duration,
        qos=args.qos,
        batch=args.batch,
        seed=args.seed,
    )
    if args.transport == Transport.MQTT.value:
        settings = _mqtt(mqtt_settings(), args)
        report = run_mqtt_load(spec, settings.host, settings.port, progress=_progress)
    else:
        opcua = _opcua(opcua_settings(), args)
        report = asyncio.run(run_opcua_load(spec, opcua, progress=_progress))
    print(report.to_json())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """``check-config FILE``: exit 0 and one summary line, or 2 and the path + reason."""
    if args.scenario:
        anomalies = load_scenario(args.file)
        print(f"{args.file}: valid simulator scenario, {len(anomalies)} anomalies")
        return 0
    config = load_config(args.file)
    print(
        f"{args.file}: valid simulator config, line {config.line}: {len(config.machines)} "
        f"machines, {len(config.sensors())} sensors, {len(config.anomalies)} anomalies"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "replay":
            return asyncio.run(_replay(args))
        if args.command == "check-config":
            return _cmd_check(args)
        if args.command == "sensors":
            print(json.dumps(describe(load_config(args.config)), indent=2, ensure_ascii=False))
            return 0
        return _cmd_load(args)
    except SimError as exc:
        print(f"tecc-sim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
