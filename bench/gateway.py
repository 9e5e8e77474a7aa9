"""Gateway benchmark: MQTT and OPC-UA ingest through the whole agent into the spool.

``python -m bench.gateway [--quick]``. Starts a real mosquitto and (in a
child process) a real asyncua server with 1,000 variables.

MQTT method (same for agent and baseline): a persistent QoS 1 session is
created, N messages are published into it while the receiver is offline, then
the receiver connects and the time from its first to its last message is
measured (for the bare clients, paho's threaded loop and an aiomqtt
``async for`` loop). This keeps the publisher off the CPU during the measurement, so the
figure is the receiver's capacity. The agent's figure counts readings
committed to the spool (validated, batched, shared, sealed for 2 clusters,
fsynced); the baseline is a bare paho-mqtt subscriber on the same backlog.

OPC-UA: the server rewrites all 1,000 variables as fast as it can; the agent
(OPC-UA source only) and a bare asyncua subscriber (iterator API) each count
data changes received over the same window.

Modbus TCP: see :mod:`bench.gateway_modbus` (the source against a bare
pymodbus client polling the same simulated device). Sparkplug B: see
:mod:`bench.gateway_sparkplug` (the MQTT method, against a bare paho client
that decodes each payload).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bench import gateway_modbus, gateway_protect, gateway_sparkplug, gateway_uplink
from bench._report import emit
from bench._services import mosquitto
from demo.services import free_port
from gateway.agent import Agent
from gateway.config import GatewayConfig
from gateway.config_yaml import parse_config
from gateway.keys import GatewayKeys
from gateway.spool import PinnedKey, Spool
from tecc_contract.keys import KemSuite, generate_cluster_keypair

SINGLE = "plant/line1/temp/value"
BATCH = "plant/line1/temp/batch"
N_NODES = 1000
OPCUA_PAUSE_S = float(os.environ.get("BENCH_OPCUA_PAUSE_S", "0"))
PUBLISH_MS = float(os.environ.get("BENCH_OPCUA_PUBLISH_MS", "200"))
QUEUE = int(os.environ.get("BENCH_OPCUA_QUEUE", "100"))


def _props() -> Properties:
    p = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    p.SessionExpiryInterval = 3600
    p.ReceiveMaximum = 65535
    return p


def _client(client_id: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


def make_session(port: int, client_id: str, topic_filter: str = "plant/#") -> None:
    """Create a persistent session subscribed to ``topic_filter``, then leave."""
    c = _client(client_id)
    done = threading.Event()
    c.on_subscribe = lambda *_a: done.set()
    c.connect("127.0.0.1", port, clean_start=False, properties=_props())
    c.loop_start()
    c.subscribe([(topic_filter, SubscribeOptions(qos=1))])
    done.wait(10)
    c.disconnect()
    c.loop_stop()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def preload(port: int, topic: str, payloads: list[bytes]) -> None:
    """Publish ``payloads`` at QoS 1 and wait for every PUBACK.

    A minimal MQTT 3.1.1 publisher on a raw socket (CONNECT, pipelined PUBLISH
    packets, count the PUBACKs): a Python client library would take longer to
    publish the backlog than the receivers take to drain it.
    """
    t = _utf8(topic.encode())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        body = _utf8(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _utf8(b"bench-pub")
        sock.sendall(bytes([0x10]) + _varint(len(body)) + body)
        if sock.recv(4)[:1] != b"\x20":
            raise RuntimeError("broker refused the bench publisher")
        for start in range(0, len(payloads), 30_000):
            chunk = payloads[start : start + 30_000]
            packets = []
            for i, p in enumerate(chunk, 1):
                rest = t + struct.pack("!H", i) + p
                packets.append(b"\x32" + _varint(len(rest)) + rest)
            sock.sendall(b"".join(packets))
            need, got = 4 * len(chunk), 0
            while got < need:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("broker closed the bench publisher's connection")
                got += len(data)
        sock.sendall(b"\xe0\x00")


@dataclass(frozen=True, slots=True)
class Drain:
    """One drain of a preloaded backlog: the rate, and process CPU seconds it took.

    CPU time (all threads of this process, from the first message to the end)
    is what a loaded machine distorts least: it does not count the time the
    process waited for a core, or for the broker.
    """

    rate: float
    cpu_s: float

    def cpu_us_per(self, n: int) -> float:
        """CPU microseconds per unit of ``n`` (messages or readings)."""
        return self.cpu_s / n * 1e6


def bare_paho(
    port: int, client_id: str, n: int, decode: Callable[[bytes], object] | None = None
) -> float:
    """Messages/s a bare paho subscriber drains (and ``decode``s) from a preloaded session."""
    return bare_paho_drain(port, client_id, n, decode).rate


def bare_paho_drain(
    port: int, client_id: str, n: int, decode: Callable[[bytes], object] | None = None
) -> Drain:
    """:func:`bare_paho` with the CPU time of the drain."""
    c = _client(client_id)
    got = 0
    first = last = 0.0
    cpu0 = cpu1 = 0.0
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        nonlocal got, first, last, cpu0, cpu1
        if got == 0:
            first, cpu0 = time.perf_counter(), time.process_time()
        if decode is not None:
            decode(msg.payload)
        got += 1
        if got == n:
            last, cpu1 = time.perf_counter(), time.process_time()
            done.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port, clean_start=False, properties=_props())
    c.loop_start()
    done.wait(120)
    c.disconnect()
    c.loop_stop()
    return Drain((n - 1) / (last - first), cpu1 - cpu0)


async def bare_aiomqtt(port: int, client_id: str, n: int) -> float:
    """Messages/s a bare aiomqtt ``async for`` loop drains from a preloaded session."""
    import aiomqtt  # noqa: PLC0415

    got = 0
    first = 0.0
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=_props(),
    ) as client:
        async for _msg in client.messages:
            if got == 0:
                first = time.perf_counter()
            got += 1
            if got == n:
                break
    return (n - 1) / (time.perf_counter() - first)


def _config(tmp: Path, *, mqtt_port: int | None, opcua_url: str | None) -> GatewayConfig:
    sources: dict[str, Any] = {}
    if mqtt_port is not None:
        sources["mqtt"] = [
            {
                "name": "mq",
                "host": "127.0.0.1",
                "port": mqtt_port,
                "client_id": "bench-gw",
                "topics": [
                    {"filter": "plant/+/+/value", "sensor_template": "{0}.{1}"},
                    {
                        "filter": "plant/+/+/batch",
                        "sensor_template": "{0}.{1}",
                        "format": "json_batch",
                    },
                ],
            }
        ]
    if opcua_url is not None:
        sources["opcua"] = [
            {
                "name": "plc",
                "url": opcua_url,
                "publishing_ms": PUBLISH_MS,
                "browse": [
                    {
                        "folder": "ns=2;s=Line2",
                        "sampling_ms": 0,
                        "queue_size": QUEUE,
                        "sensor_template": "line2.{name}",
                    }
                ],
            }
        ]
    dead = free_port()
    doc = {
        "gateway_id": "gw-bench",
        "state_dir": str(tmp),
        "sensors": [{"id": "line1.temp", "range": [-1000, 1e6]}]
        + [{"id": f"line2.v{i}", "range": [-1e9, 1e9]} for i in range(N_NODES)],
        "sources": sources,
        "batching": {"max_readings": 50_000, "max_delay_s": 0.25},
        "spool": {"path": str(tmp / "spool.db")},
        "clusters": [
            {"index": i, "url": f"http://127.0.0.1:{dead}", "service_id": f"p{i}", "tls": False}
            for i in range(2)
        ],
        "attestation": {"platform_keys": {"p": "00" * 32}, "allowed_measurements": ["00" * 32]},
        "http": {"port": free_port()},
        # throughput only: the generated values exceed the analytics' value bound
        "envelope": {"value_bound_bits": None},
    }
    return parse_config(doc, base=tmp)


def _agent(cfg: GatewayConfig) -> Agent:
    """An agent whose cluster keys are already pinned (clusters themselves are down)."""
    keys = GatewayKeys(Ed25519PrivateKey.generate(), os.urandom(32))
    spool = Spool(
        cfg.spool.path,
        gateway_id=cfg.gateway_id,
        n_clusters=2,
        spool_key=keys.spool_key,
        max_bytes=cfg.spool.max_bytes,
    )
    for i in range(2):
        spool.pin(PinnedKey(i, f"p{i}", "x25519", generate_cluster_keypair(KemSuite.X25519)[1]))
    spool.close()
    return Agent(cfg, keys)


async def agent_mqtt(cfg: GatewayConfig, n_readings: int) -> float:
    """Readings/s from the first accepted reading until all are committed to the spool."""
    return (await agent_mqtt_drain(cfg, n_readings)).rate


async def agent_mqtt_drain(cfg: GatewayConfig, n_readings: int) -> Drain:
    """:func:`agent_mqtt` with the CPU time of the drain (every thread of the agent)."""
    agent = _agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    while True:
        if agent.ingest.accepted.get("mq"):
            break
        await asyncio.sleep(0.001)
    start, cpu0 = time.perf_counter(), time.process_time()
    while agent.spooled_readings < n_readings:
        await asyncio.sleep(0.005)
        if time.perf_counter() - start > 120:
            break
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    stop.set()
    await task
    return Drain(agent.spooled_readings / elapsed, cpu)


async def agent_opcua(cfg: GatewayConfig, seconds: float) -> tuple[float, float]:
    """Data changes/s the agent's OPC-UA source accepts over ``seconds``, and its CPU share.

    The CPU share (process CPU seconds per wall second, all threads) shows how
    much headroom the agent has when the server is the limit.
    """
    agent = _agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    while True:
        if agent.opcua[0].subscribed >= N_NODES:
            break
        if task.done():
            task.result()  # the agent stopped: raise its error instead of waiting forever
            raise RuntimeError("the agent stopped before subscribing")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    n0, t0, c0 = agent.ingest.accepted.get("plc", 0), time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - t0
    rate = (agent.ingest.accepted.get("plc", 0) - n0) / wall
    cpu = (time.process_time() - c0) / wall
    stop.set()
    await task
    return rate, cpu


async def bare_asyncua(url: str, seconds: float) -> float:
    """Data changes/s a bare asyncua subscriber (iterator API) receives."""
    from asyncua import ua  # noqa: PLC0415
    from asyncua.client.client import Client  # noqa: PLC0415

    async with Client(url) as client:
        folder = client.get_node("ns=2;s=Line2")
        nodes = await folder.get_children(nodeclassmask=ua.NodeClass.Variable)
        sub = await client.create_subscription(PUBLISH_MS, queue_maxsize=0)
        await sub.subscribe_data_change(nodes, queuesize=QUEUE, sampling_interval=ua.Double(0))
        count = 0
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            await sub.next_event(timeout=1)
        t0 = time.perf_counter()
        while (now := time.perf_counter()) - t0 < seconds:
            await sub.next_event(timeout=1)
            count += 1
        await sub.delete()
        return count / (now - t0)


def serve_opcua(port: int, n: int, pause: float) -> None:
    """Child process: an asyncua server rewriting ``n`` variables, ``pause`` s between rounds.

    The pause leaves the server time to encode its publish responses; a writer
    that never yields starves them and caps every client far below its capacity.
    """
    from asyncua import ua  # noqa: PLC0415
    from asyncua.server.server import Server  # noqa: PLC0415

    async def run() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
        idx = await server.register_namespace("urn:bench")
        folder = await server.nodes.objects.add_folder(
            ua.NodeId(ua.String("Line2"), ua.Int16(idx)), "Line2"
        )
        ids = [
            (
                await folder.add_variable(
                    ua.NodeId(ua.String(f"Line2.v{i}"), ua.Int16(idx)), f"v{i}", 0.0
                )
            ).nodeid
            for i in range(n)
        ]
        async with server:
            print("ready", flush=True)
            k = 0.0
            writes, t0 = 0, time.perf_counter()
            while True:
                k += 1
                for nid in ids:
                    await server.write_attribute_value(
                        nid, ua.DataValue(ua.Variant(k, ua.VariantType.Double))
                    )
                writes += n
                await asyncio.sleep(pause)
                if time.perf_counter() - t0 > 2:
                    print(f"writes_per_s {writes / (time.perf_counter() - t0):.0f}", flush=True)
                    writes, t0 = 0, time.perf_counter()

    asyncio.run(run())


def main() -> None:
    """Run all measurements and print the JSON result line."""
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-opcua":
        serve_opcua(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    quick = "--quick" in sys.argv
    logging.basicConfig(level=logging.CRITICAL)  # the bench's clusters are down on purpose
    t_start = time.perf_counter()

    def note(what: str) -> None:
        print(f"{time.perf_counter() - t_start:6.1f}s {what}", file=sys.stderr, flush=True)

    n_single = 30_000 if quick else 150_000
    n_batch = 4_000 if quick else 10_000
    window = 3.0 if quick else 10.0
    out: dict[str, Any] = {"quick": quick}
    single = [str(20 + (i % 1000) / 100).encode() for i in range(n_single)]
    batch = [
        ("[" + ",".join(str(i + j / 100) for j in range(100)) + "]").encode()
        for i in range(n_batch)
    ]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        with mosquitto(tmp / "mq", persistence=False) as broker:
            port = broker.port
            for cid, payloads, topic, key in (
                ("bare-1", single, SINGLE, "baseline_paho_single_msgs_per_s"),
                ("bare-b", batch, BATCH, "baseline_paho_batched_msgs_per_s"),
            ):
                make_session(port, cid)
                preload(port, topic, payloads)
                drain = bare_paho_drain(port, cid, len(payloads))
                out[key] = round(drain.rate)
                out[key.replace("_msgs_per_s", "_cpu_us_per_msg")] = round(
                    drain.cpu_us_per(len(payloads)), 2
                )
                note(key)
            make_session(port, "bare-aio")
            preload(port, SINGLE, single[:10_000])
            out["baseline_aiomqtt_single_msgs_per_s"] = round(
                asyncio.run(bare_aiomqtt(port, "bare-aio", 10_000))
            )
            note("aiomqtt")
            for i, (payloads, topic, key, per) in enumerate(
                (
                    (single, SINGLE, "mqtt_single_msgs_per_s", 1),
                    (batch, BATCH, "mqtt_batched_readings_per_s", 100),
                )
            ):
                cfg = _config(tmp / f"a{i}", mqtt_port=port, opcua_url=None)
                make_session(port, "bench-gw")
                preload(port, topic, payloads)
                drain = asyncio.run(agent_mqtt_drain(cfg, len(payloads) * per))
                out[key] = round(drain.rate)
                out[key.rsplit("_", 3)[0] + "_cpu_us_per_msg"] = round(
                    drain.cpu_us_per(len(payloads)), 2
                )
                note(key)
        out["mqtt_single_ratio_vs_paho"] = round(
            out["mqtt_single_msgs_per_s"] / out["baseline_paho_single_msgs_per_s"], 3
        )
        out["mqtt_single_cpu_ratio_vs_paho"] = round(
            out["baseline_paho_single_cpu_us_per_msg"] / out["mqtt_single_cpu_us_per_msg"], 3
        )
        out["mqtt_batched_ratio_vs_paho"] = round(
            out["mqtt_batched_readings_per_s"] / (100 * out["baseline_paho_batched_msgs_per_s"]), 3
        )
        opc_port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.gateway",
                "--serve-opcua",
                str(opc_port),
                str(N_NODES),
                str(OPCUA_PAUSE_S),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            url = f"opc.tcp://127.0.0.1:{opc_port}/bench/"
            out["baseline_asyncua_changes_per_s"] = round(asyncio.run(bare_asyncua(url, window)))
            note("asyncua")
            cfg = _config(tmp / "o", mqtt_port=None, opcua_url=url)
            rate, cpu = asyncio.run(agent_opcua(cfg, window))
            out["opcua_changes_per_s"] = round(rate)
            out["opcua_agent_cpu_cores"] = round(cpu, 2)
            out["opcua_ratio_vs_asyncua"] = round(
                out["opcua_changes_per_s"] / out["baseline_asyncua_changes_per_s"], 3
            )
        finally:
            server.terminate()
            lines = server.communicate(timeout=10)[0].split()
            rates = [float(x) for x in lines[1::2] if x.replace(".", "").isdigit()]
            out["opcua_server_writes_per_s"] = round(max(rates)) if rates else None
    out.update(gateway_modbus.measure(window))
    note("modbus")
    out.update(gateway_sparkplug.measure(quick))
    note("sparkplug")
    out.update(gateway_uplink.measure(quick))
    note("uplink TLS vs plain")
    out.update(gateway_protect.measure(quick))
    note("spool at rest, TPM sessions")
    out["nodes"] = N_NODES
    emit(out)


if __name__ == "__main__":
    main()
