"""Sparkplug B part of ``bench.gateway``: the gateway's Sparkplug host against a bare client.

Same method as the MQTT part of :mod:`bench.gateway`: a persistent QoS 1
session subscribed to ``spBv1.0/#`` is created, the backlog is published into
it while the receiver is offline, then the receiver connects and the time from
its first to its last message is measured. The backlog comes from the
simulator's edge node (:class:`firmware_sim.sparkplug_node.EdgeNode`): one
NBIRTH declaring ``N_METRICS`` Double metrics with names and aliases, then
NDATA messages carrying all of them by alias, consecutive ``seq``, a timestamp
per metric.

* baseline: a bare paho-mqtt subscriber (threaded loop) that decodes every
  payload with ``Payload.FromString`` (the Sparkplug B protobuf schema the
  gateway uses) and counts its metrics. For a protobuf protocol the decode is
  part of any client's job, so this is the fair bare client; its rate in
  readings/s is messages/s × ``N_METRICS``. The same subscriber without the
  decode is reported too, for context (the cost of the protobuf decode alone);
* the agent: the whole gateway with one MQTT source whose topic rule has
  ``format: sparkplug_b`` and ``sensor_template: "{node}.{device}.{metric}"``;
  its figure counts readings committed to the spool (birth and alias tracking,
  seq checks, validation, batching, sharing, sealing for 2 clusters, fsync),
  like ``bench.gateway.agent_mqtt``.

The three are measured alternately, ``rounds`` times each, and the best round
of each is kept, so that a busy machine biases none of them. Target: the
agent's readings/s ≥ 0.8 × the decoding baseline's.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench._services import mosquitto
from demo.services import free_port
from firmware_sim.sparkplug_node import EdgeNode
from gateway.config import GatewayConfig
from gateway.config_yaml import parse_config
from tecc_contract.sparkplug import Payload

if TYPE_CHECKING:
    from bench.gateway import Drain

N_METRICS = 10
NODE = "n1"


def backlog(n_msgs: int) -> tuple[tuple[str, bytes], tuple[str, list[bytes]]]:
    """The NBIRTH (topic, payload), then the NDATA topic and ``n_msgs - 1`` payloads."""
    names = tuple(f"m{j}" for j in range(N_METRICS))
    node = EdgeNode(group="bench", node=NODE, node_metrics=names)
    birth = node.births({("", name): 20.0 for name in names})[0]
    t0 = time.time() - 60  # in the past: the agent rejects readings from the future
    data: list[bytes] = []
    topic = ""
    for k in range(n_msgs - 1):
        ts = t0 + k * 1e-4
        topic, body = node.data(
            "", [(name, ts, 20.0 + j + (k % 100) / 100) for j, name in enumerate(names)]
        )
        data.append(body)
    return birth, (topic, data)


def _load(port: int, client_id: str, n_msgs: int) -> None:
    from bench.gateway import make_session, preload  # noqa: PLC0415

    (birth_topic, birth), (data_topic, data) = backlog(n_msgs)
    make_session(port, client_id, "spBv1.0/#")
    preload(port, birth_topic, [birth])
    preload(port, data_topic, data)


def bare_paho_decode(port: int, client_id: str, n: int) -> Drain:
    """A bare paho subscriber draining and decoding a preloaded session: rate and CPU."""
    from bench.gateway import bare_paho_drain  # noqa: PLC0415

    metrics = 0

    def decode(payload: bytes) -> None:
        nonlocal metrics
        metrics += len(Payload.FromString(payload).metrics)

    drain = bare_paho_drain(port, client_id, n, decode)
    if metrics < (n - 1) * N_METRICS:
        raise RuntimeError(f"bare client decoded {metrics} metrics from {n} messages")
    return drain


def _config(
    tmp: Path, port: int, client_id: str, batching: tuple[int, float] = (50_000, 0.25)
) -> GatewayConfig:
    dead = free_port()
    doc = {
        "gateway_id": "gw-bench",
        "state_dir": str(tmp),
        "sensors": [{"id": f"{NODE}.m{j}", "range": [-1000, 1000]} for j in range(N_METRICS)],
        "sources": {
            "mqtt": [
                {
                    "name": "mq",  # the name bench.gateway.agent_mqtt counts
                    "host": "127.0.0.1",
                    "port": port,
                    "client_id": client_id,
                    "topics": [
                        {
                            "filter": "spBv1.0/#",
                            "sensor_template": "{node}.{device}.{metric}",
                            "format": "sparkplug_b",
                        }
                    ],
                }
            ]
        },
        "batching": {"max_readings": batching[0], "max_delay_s": batching[1]},
        "spool": {"path": str(tmp / "spool.db")},
        "clusters": [
            {"index": i, "url": f"http://127.0.0.1:{dead}", "service_id": f"p{i}", "tls": False}
            for i in range(2)
        ],
        "attestation": {"platform_keys": {"p": "00" * 32}, "allowed_measurements": ["00" * 32]},
        "http": {"port": free_port()},
        "envelope": {"value_bound_bits": None},
    }
    return parse_config(doc, base=tmp)


def measure(quick: bool) -> dict[str, float]:
    """The agent's and both baselines' rates and the ratio, against one broker.

    Quick: 2 rounds of 15,000 messages (about 10 s); full: 3 rounds of 40,000.
    The agent's figure includes the commit of its last batch after the last
    message (as in ``bench.gateway.agent_mqtt``), which a larger backlog amortises.
    """
    from bench.gateway import agent_mqtt_drain, bare_paho_drain  # noqa: PLC0415

    n_msgs, rounds = (15_000, 2) if quick else (40_000, 3)
    n_readings = n_msgs * N_METRICS  # NBIRTH values + NDATA values
    raw: list[Drain] = []
    decoded: list[Drain] = []
    agent: list[Drain] = []
    with tempfile.TemporaryDirectory() as td, mosquitto(Path(td) / "mq", persistence=False) as b:
        for r in range(rounds):
            _load(b.port, f"bare-spb-raw{r}", n_msgs)
            raw.append(bare_paho_drain(b.port, f"bare-spb-raw{r}", n_msgs))
            _load(b.port, f"bare-spb-dec{r}", n_msgs)
            decoded.append(bare_paho_decode(b.port, f"bare-spb-dec{r}", n_msgs))
            _load(b.port, f"bench-spb-gw{r}", n_msgs)  # a fresh session and spool per round
            cfg = _config(Path(td) / f"a{r}", b.port, f"bench-spb-gw{r}")
            agent.append(asyncio.run(agent_mqtt_drain(cfg, n_readings)))
    best_decoded = max(d.rate for d in decoded) * N_METRICS
    best_agent = max(d.rate for d in agent)
    cpu_decoded = min(d.cpu_us_per(n_msgs) for d in decoded)
    cpu_agent = min(d.cpu_us_per(n_msgs) for d in agent)
    return {
        "sparkplug_readings_per_s": round(best_agent),
        "sparkplug_msgs_per_s": round(best_agent / N_METRICS),
        "baseline_paho_sparkplug_msgs_per_s": round(max(d.rate for d in raw)),
        "baseline_paho_sparkplug_decoded_readings_per_s": round(best_decoded),
        "sparkplug_ratio_vs_paho_decode": round(best_agent / best_decoded, 3),
        "sparkplug_cpu_us_per_msg": round(cpu_agent, 2),
        "baseline_paho_sparkplug_decode_cpu_us_per_msg": round(cpu_decoded, 2),
        "sparkplug_cpu_ratio_vs_paho_decode": round(cpu_decoded / cpu_agent, 3),
        "sparkplug_metrics_per_msg": N_METRICS,
    }
