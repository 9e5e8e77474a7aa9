"""The demo's JetStream layout (``./tecc demo --workers K``): per party a NATS node,
one ingest frontend and K shard workers.

Each party (trust domain) gets its own JetStream node (its credential in
that party's ``nats/`` directory; docs/CLOUD.md, "JetStream layout"), every
worker of the party consumes its shard from that node's share log, and the
gateways upload to the party's frontend, which verifies, opens, splits by
shard and publishes. The supervisor runs the nodes like any other child.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud_tecc.jetstream.server import nats_server_binary, prepare_node
from demo.devstack.deployment import Deployment, free_port


@dataclass(frozen=True, slots=True)
class NodeChild:
    """One party's JetStream node as a supervised child."""

    name: str
    argv: tuple[str, ...]
    port: int
    monitor_url: str


def configure(dep: Deployment, root: Path) -> tuple[list[NodeChild], dict[int, str]]:
    """Point every worker of ``dep`` at its party's node; one frontend per party.

    Returns the nodes to start (before the workers) and party index →
    frontend service name (the gateways' ingest endpoint of that cluster).
    Call before ``dep.write_configs()``; the frontends' configs are written
    from the shard-0 worker's.
    """
    nodes: list[NodeChild] = []
    for i, party in enumerate(dep.parties):
        port, monitor = free_port(), free_port()
        node = prepare_node(root / f"{party}-nats", name=f"{party}-nats", port=port,
                            monitor_port=monitor)  # fmt: skip
        nodes.append(
            NodeChild(
                name=node.spec.name,
                argv=(nats_server_binary(), "-c", str(node.config_path)),
                port=port,
                monitor_url=f"http://127.0.0.1:{monitor}/healthz",
            )
        )
        js = {"jetstream": {"servers": [node.url]}, "hpke_rotation_s": 0}
        for k in range(dep.shards):
            dep.party_overrides[dep.worker(i, k)] = js
    dep.write_configs()
    frontends = {i: dep.add_frontend(party) for i, party in enumerate(dep.parties)}
    return nodes, frontends
